"""Reduced apel/db/records/__init__.py (see ../../../README.md): the normalised summaries."""

# the order of the original: normalised_summary imports Record from this package
from .record import InvalidRecordException, Record  # noqa: I001
from .normalised_summary import NormalisedSummaryRecord, NormalisedSummaryRecord04

__all__ = [
    "InvalidRecordException",
    "NormalisedSummaryRecord",
    "NormalisedSummaryRecord04",
    "Record",
]
