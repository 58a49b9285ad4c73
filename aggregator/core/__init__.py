"""What every layer of the aggregator shares and nothing else: the server's settings
(`ServerSettings`, one per process, and the trusted issuers' configuration), the latency model
(kinds, fixed histogram buckets, default SLOs, percentiles) and the one SMTP path. It imports
nothing of afmon."""
