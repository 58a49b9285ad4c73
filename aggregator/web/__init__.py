"""The server that composes the layers below: `app.create_app(settings)` builds the
`Services` of one process (`services`), the ingest, read, report and producer routes, /metrics
and /healthz, and the periodic jobs; packages above the aggregator (the dashboard, the alerts)
plug in as `extensions`, found through entry points, so the web app imports neither."""
