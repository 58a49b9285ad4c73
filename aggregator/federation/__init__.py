"""Federated accounting: facility afmons publish their ledger hours to VO-level afmons
(docs/federation.md)."""
