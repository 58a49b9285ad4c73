"""The ledger: how samples and events become hourly usage per (facility, VO, group, member,
resource) and latency histograms, as pure functions (docs/accounting.md states the rules).

`base` holds the rules' building blocks (increments, counters, gauges, the metric rules) and
the registry of event rules; `events`, `latency` and `batch` register the rule of each event
kind. Importing any part of the package registers them all. The ledger imports the identity
model and the shared core only: never the ingest, the stores' connections or the web app.
"""

from afmon.aggregator.ledger import batch, events, latency  # noqa: F401  (they register rules)
