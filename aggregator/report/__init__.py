"""The weekly accounting report: built through the query layer, rendered as CSV, JSON,
self-contained HTML and APEL, from the CLI, the API, the dashboard and a server schedule.
See docs/report.md. It imports the core, the store and the query layer."""
