"""/metrics render time: afmon's exposition path against plain prometheus_client.

In one run, on the same series (usage counters per facility and VO, node gauges,
in the proportions a large deployment has), for 1k, 10k and 100k series:
  (a) prometheus_client: a collector yielding CounterMetricFamily/GaugeMetricFamily
      built from the rows, rendered by `generate_latest` (what afmon did before);
  (b) afmon: `afmon.aggregator.metrics.exporter.render_families` on the same rows (the cold path of
      /metrics: the cache is empty, the rows are read, the text is built).
Both outputs are checked to parse to the same samples. Prints the median of
several rounds per size and the ratio. Goal: 10k series under 20 ms.

    python bench/metrics.py [--sizes 1000,10000,100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from afmon.aggregator.metrics.catalog import spec, usage_metric_name
from afmon.aggregator.metrics.exporter import Family, render_families
from afmon.aggregator.store.schema import RESOURCES


def make_families(n_series: int) -> list[Family]:
    """Half usage counters (resources x facilities x VOs), half node gauges."""
    usage = [Family(spec(usage_metric_name(r)), []) for r in RESOURCES]
    nodes = [
        Family(spec(n), [])
        for n in ("afmon_node_cpu_cores", "afmon_node_memory_bytes", "afmon_node_cpu_busy_ratio")
    ]
    per_usage = n_series // 2 // len(usage)
    for fam in usage:
        fam.rows = [
            ((f"af-{i // 50:03d}", f"vo{i % 50:02d}"), 1234567.25 + i) for i in range(per_usage)
        ]
    per_node = (n_series - per_usage * len(usage)) // len(nodes)
    for k, fam in enumerate(nodes):
        fam.rows = [
            ((f"af-{i // 500:03d}", f"node{i:06d}"), 64.0 * (k + 1)) for i in range(per_node)
        ]
    return usage + nodes


class _Rows:
    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for fam in self._families:
            yield fam.to_metric()


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _samples(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"{'series':>8} {'prometheus_client ms':>21} {'afmon ms':>9} {'speed-up':>9}")
    for n in (int(x) for x in args.sizes.split(",")):
        families = make_families(n)
        total = sum(len(f.rows) for f in families)
        registry = CollectorRegistry()
        registry.register(_Rows(families))  # type: ignore[arg-type]
        plain = generate_latest(registry).decode()
        ours = render_families(families)
        if _samples(plain) != _samples(ours):
            raise SystemExit(f"outputs differ at {n} series")
        t_plain = _median_ms(lambda r=registry: generate_latest(r), args.rounds)
        t_ours = _median_ms(lambda f=families: render_families(f).encode(), args.rounds)
        print(f"{total:>8,} {t_plain:>21.1f} {t_ours:>9.1f} {t_plain / t_ours:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
