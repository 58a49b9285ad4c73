"""/metrics for Prometheus: the catalog of every family afmon exposes (`catalog`, bounded
labels only, never a user), the registry of ingest instruments and ledger, node and agent
gauges (`exporter`), and the latency histograms read from the ledger (`latency`). It imports
the core and the store."""
