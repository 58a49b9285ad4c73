"""afmon aggregator: ingest, identity, ledger, query layer, /metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("afmon")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
