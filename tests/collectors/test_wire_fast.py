"""The wire's fast paths give what the full ones give: the pattern-free decode
(`wire._decode_fast`) the same batch as the full decoder or no answer (never a batch the full
decoder refuses), and the one-sample check (`wire._plain`) never passes a series that a rule
refuses. Hypothesis over bodies built from near-valid pieces (names, control characters,
escapes, DEL, values at the bounds)."""

from __future__ import annotations

import json
import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afmon.collectors import wire

SETTINGS = settings(max_examples=400, deadline=None)

names = st.sampled_from(
    ["user", "node", "user_cpu_seconds", "gpu", "a:b.c-d", "_x", "", "1abc", "a b", "ab\n",
     "a\x00", "é", "x" * 129, "facility", "vo", "member", "group", "a\x7f", "a\\b", "a/b"]
)  # fmt: skip
texts = st.sampled_from(
    ["n1.example.org", "alice", "", "a\nb", "tab\there", "del\x7f", "nul\x00", "ü-umlaut",
     "y" * 257, "back\\slash", "quote\"d", "4 cores, 8 GiB"]
)  # fmt: skip
floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e300, 1.7976931348623157e308, 5e15]),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
metrics = st.one_of(names, st.sampled_from(sorted(wire.KNOWN_METRICS)))


@st.composite
def series(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(0, 3))
    out: dict[str, object] = {
        "metric": draw(metrics),
        "unit": draw(st.sampled_from(["seconds", "bytes", "1", "", "u\n", "cores"])),
        "kind": draw(st.sampled_from(["counter", "gauge", "histogram"])),
        "labels": draw(st.dictionaries(names, texts, max_size=3)),
        "times": sorted(draw(st.lists(st.floats(0, 2e9), min_size=n, max_size=n))),
        "values": draw(st.lists(floats, min_size=n, max_size=n + draw(st.integers(0, 1)))),
    }
    if draw(st.booleans()):
        out["created"] = draw(st.floats(-1, 2e9))
    if draw(st.booleans()):
        out["temporality"] = draw(st.sampled_from(["cumulative", "delta", "other"]))
    return out


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    events = [
        {
            "kind": draw(st.sampled_from(["session", "batch_job", "nope"])),
            "id": draw(texts),
            "user": draw(texts),
            "start": draw(st.floats(0, 2e9)),
            "attrs": draw(st.dictionaries(names, st.one_of(texts, floats), max_size=2)),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    batch = {
        "version": 1,
        "agent_id": draw(texts),
        "facility": draw(st.sampled_from(["af", "bad facility", "af-2.x"])),
        "node": draw(texts),
        "seq": draw(st.integers(-1, 5)),
        "sent_at": 1.7e9,
        "series": draw(st.lists(series(), max_size=4)),
        "events": events,
    }
    return json.dumps(batch, ensure_ascii=draw(st.booleans())).encode()


def _full(body: bytes) -> wire.Batch | str:
    try:
        return wire._decoder.decode(body)
    except msgspec.DecodeError as exc:
        return str(exc)


@SETTINGS
@given(bodies())
def test_fast_decode_equals_the_full_decoder_or_declines(body: bytes) -> None:
    full = _full(body)
    fast = wire._decode_fast(body)
    if fast is not None:
        assert isinstance(full, wire.Batch), full  # never accepts what the full one refuses
        assert fast == full
        assert [type(s) for s in fast.series] == [wire.Series] * len(fast.series)
        assert wire.encode(fast) == wire.encode(full)


@SETTINGS
@given(bodies())
def test_decode_records_answers_as_before(body: bytes) -> None:
    """`decode_records` (the server's) and `decode` give the full decoder's batch or error."""
    full = _full(body)
    for decode in (
        lambda b: wire.decode_records(b)[0],
        lambda b: wire.decode(b, strict=False),
    ):
        try:
            got: wire.Batch | str = decode(body)
        except wire.WireError as exc:
            assert not isinstance(full, wire.Batch) or full.version != wire.WIRE_VERSION, exc
            continue
        if isinstance(full, wire.Batch):
            assert got == full


def test_common_bodies_take_the_fast_path_and_odd_ones_do_not() -> None:
    s = wire.Series("user_cpu_seconds", "seconds", "counter", {"user": "a", "node": "n"}, [1.0],
                    [2.0])  # fmt: skip
    batch = wire.Batch(1, "agent", "af", "n", 1, 1.0, [s], [])
    assert wire._decode_fast(wire.encode(batch)) == batch
    for odd in ({"user": "a\nb"}, {"user": "a\x7f"}, {"bad key": "a"}):
        body = wire.encode(msgspec.structs.replace(batch, series=[
            msgspec.structs.replace(s, labels=odd)]))  # fmt: skip
        assert wire._decode_fast(body) is None


@SETTINGS
@given(series(), st.sampled_from([None, 1e15, 0.0, math.inf]), st.sampled_from([None, 1.5e9]))
def test_plain_never_passes_a_refused_series(
    raw: dict[str, object], max_value: float | None, limit: float | None
) -> None:
    try:
        s = msgspec.convert(raw, wire.Series)
    except msgspec.ValidationError:
        return
    batch = wire.Batch(1, "agent", "af", "n", 1, 1.0, [s], [])
    now, skew = (None, None) if limit is None else (limit - 300.0, 300.0)
    refused = wire.refusals(batch, now=now, max_future_skew=skew, max_value=max_value)
    vmax = wire._FLOAT_MAX if max_value is None else min(max_value, wire._FLOAT_MAX)
    if wire._plain(s, vmax, limit):
        assert refused == []
    # the full rules, bypassing the fast check, find the same
    problem = wire._series_problem(s, "$.series[0]", limit, now, skew)
    if problem is None and max_value is not None and s.values:
        if max(map(abs, s.values)) > max_value:
            problem = ("$.series[0].values", "value_too_large", "")
    assert (problem is None) == (refused == [])
    if problem is not None:
        assert refused[0].reason == problem[1]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, -0.0, 2e15])
def test_plain_edge_values(value: float) -> None:
    s = wire.Series("user_processes", "1", "gauge", {"user": "a"}, [1.0], [value])
    batch = wire.Batch(1, "agent", "af", "n", 1, 1.0, [s], [])
    refused = wire.refusals(batch, max_value=1e15)
    assert (wire._plain(s, 1e15, None)) == (refused == [])
