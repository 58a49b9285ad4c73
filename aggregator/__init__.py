"""afmon's aggregator: the service, in subpackages by concern (core, store, identity, ledger,
ingest, query, metrics, auth, report, web, cli) that import downward only; the table of what
each may import is in docs/architecture.md and tests/test_architecture.py."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("afmon")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
