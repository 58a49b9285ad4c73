"""Reduced apel/db/__init__.py (see ../../README.md): its constants, without the MySQL backend."""

LOGGER_ID = "apeldb"

SUMMARY_MSG_HEADER = "APEL-summary-job-message: v0.2"
SUMMARY_MSG_HEADER_04 = "APEL-summary-job-message: v0.4"
NORMALISED_SUMMARY_MSG_HEADER = "APEL-summary-job-message: v0.3"
NORMALISED_SUMMARY_MSG_HEADER_04 = "APEL-normalised-summary-message: v0.4"
