"""Fixtures shared by the aggregator's tests."""

from tests.aggregator.test_influx_store import vm_factory  # noqa: F401  (a real VictoriaMetrics)
