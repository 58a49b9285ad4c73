"""Where the aggregator keeps things: the tables and the catalog of ledger resources
(`schema`), the engine and its connections (`db`), the daily rollup, schema migrations
(Alembic), retention of raw samples, and the durable outbox to an InfluxDB-API time-series
store (`tsdb`). It imports the core and the wire contract only; it knows no rule and no route."""
