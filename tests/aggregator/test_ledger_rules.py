"""The ledger's counter rules: the per-hour shortcut equals the per-sample rule exactly."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from afmon.aggregator.ledger.base import HOUR, counter_increases, counter_increases_per_hour

BASE = 1_790_000_000.0  # whole hour


def per_hour(pieces: object) -> dict[int, float]:
    out: dict[int, float] = defaultdict(float)
    for t, amount in pieces:  # type: ignore[attr-defined]
        out[int(t // HOUR) * HOUR] += amount
    return dict(out)


@st.composite
def counter_series(draw: st.DrawFn) -> tuple[list[float], list[float], float | None,
                                             float | None, float | None]:
    steps = draw(st.lists(st.integers(1, 900), min_size=1, max_size=60))
    times = [BASE + sum(steps[: i + 1]) * 10.0 for i in range(len(steps))]
    incs = draw(st.lists(st.integers(0, 400), min_size=len(times), max_size=len(times)))
    resets = draw(st.sets(st.integers(0, len(times) - 1), max_size=2))
    values, v = [], 0.0
    for i, d in enumerate(incs):
        v = d * 0.25 if i in resets else v + d * 0.25  # quarters: exact in binary
        values.append(v)
    cut = draw(st.integers(-1, len(times) - 1))
    last_time = None if cut < 0 else times[cut]
    last_value = None if cut < 0 else draw(st.sampled_from([values[cut], values[cut] + 50.0]))
    created = draw(st.sampled_from([None, BASE, times[-1] + 1, (last_time or BASE) + 5]))
    return times, values, last_time, last_value, created


@settings(max_examples=400, deadline=None)
@given(counter_series())
def test_per_hour_shortcut_equals_the_per_sample_rule(
    case: tuple[list[float], list[float], float | None, float | None, float | None],
) -> None:
    times, values, last_time, last_value, created = case
    fast = counter_increases_per_hour(times, values, last_time, last_value, created)
    slow = per_hour(counter_increases(times, values, last_time, last_value, created))
    if fast is None:  # a reset among the new samples: the caller takes the per-sample rule
        k = sum(1 for t in times if last_time is None or t > last_time)
        new, new_times = values[len(values) - k :], times[len(times) - k :]
        restarted = created is not None and new_times[0] < created <= new_times[-1]
        assert restarted or any(b < a for a, b in zip(new, new[1:], strict=False))
    else:
        assert {h: a for h, a in per_hour(fast).items() if a} == {
            h: a for h, a in slow.items() if a
        }
