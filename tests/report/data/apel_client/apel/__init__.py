"""Reduced package init (see ../README.md): the APEL package, version of the commit used."""

__version__ = (2, 5, 0)
