"""The one ingest path: `apply.Ingestor` applies a wire batch exactly once in one transaction
(series, samples, ledger increments, events, agent liveness); `lineprotocol` and `otlp` turn
Telegraf's and OpenTelemetry's bodies into wire batches for it. The HTTP routes that receive
them are the web app's. It imports the core, the store, the identity map and the ledger."""
