"""The wire contract between afmon agents (producers) and the aggregator.

This module is owned by the collectors and imports no server library: the
aggregator imports it, never the other way round.

A batch carries the agent's id, its facility and node, and a sequence number
that the agent never reuses; the aggregator applies each (agent_id, seq) once.
Samples travel grouped by series (metric, unit, kind, labels, then parallel
arrays of times and values), so a sample costs two numbers on the wire.
Events are things with a start and an end: sessions, Dask clusters, batch jobs.

Times are UNIX epoch seconds (UTC) as floats. Values are floats in the unit
the series names. Decoding is one pass from the raw bytes (msgspec validates
while it parses); `check_batch` then adds the few cross-field rules that a
type cannot express.
"""

from __future__ import annotations

import gzip
import math
import operator
import re
import sys
import zlib
from typing import Annotated, Literal

import msgspec

WIRE_VERSION = 1
CONTENT_TYPE = "application/vnd.afmon.batch+json"

# Strings carry no NUL character: PostgreSQL cannot store one in text, so a NUL must be
# refused here, naming its field, and never reach the database (a 500 there).
NO_NUL = r"^[^\x00]*$"
# Names and label values carry no control character at all (a newline or escape in a label
# would garble logs, exports and the Prometheus exposition); free text (event attributes, such
# as a spawn's error message) may have line breaks, but no NUL.
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def fits_label(value: str) -> bool:
    """Whether `value` may be a label value or name of the wire (`LabelValue`, `Text`)."""
    return len(value) <= 256 and _CONTROL.search(value) is None


NAME_PATTERN = r"^[A-Za-z_:][A-Za-z0-9_:.\-]*$"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NAME_PATTERN)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_CONTROL)]
LabelValue = Annotated[str, msgspec.Meta(max_length=256, pattern=NO_CONTROL)]
Unit = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=NO_CONTROL)]
AttrText = Annotated[str, msgspec.Meta(pattern=NO_NUL)]
Epoch = Annotated[float, msgspec.Meta(ge=0)]
SEQ_MAX = (1 << 63) - 1  # the database's BIGINT


class Series(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One metric with one label set, and its samples as parallel arrays.

    `created` is when a counter started from zero (like OpenMetrics'
    `_created`). Without it the first sample the aggregator sees of a counter
    is only a baseline; with it, the first sample counts in full.
    `temporality` "delta" (counters only; OTLP's delta sums arrive so): each value is the
    increase since the series' previous sample (or since `created`), and the aggregator
    adds it to the series' stored total, so the store and the ledger see a cumulative
    counter.
    """

    metric: Name
    unit: Unit
    kind: Literal["counter", "gauge"]
    labels: dict[Name, LabelValue]
    times: list[Epoch]
    values: list[float]
    created: Epoch | None = None
    temporality: Literal["cumulative", "delta"] = "cumulative"


class Event(msgspec.Struct, forbid_unknown_fields=True):
    """Something with a start and (once known) an end, owned by a local user."""

    kind: Literal[
        "session",
        "dask_cluster",
        "batch_job",
        "spawn",
        "dask_scale",
        "dask_worker",
        "dask_computation",
        "gpu_idle",
    ]
    id: Text
    user: Text
    start: Epoch
    end: Epoch | None = None
    attrs: dict[Name, AttrText | int | float | bool] = {}


class _Head(msgspec.Struct, forbid_unknown_fields=True):
    """The envelope's fields: what refuses a batch as a whole when it is wrong."""

    version: int
    agent_id: Text
    facility: Name
    node: Text
    seq: Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
    sent_at: Epoch


class Batch(_Head, forbid_unknown_fields=True):
    series: list[Series] = []
    events: list[Event] = []

    @property
    def sample_count(self) -> int:
        return sum(len(s.times) for s in self.series)


class WireError(ValueError):
    """A batch that cannot be accepted; `field` names where the problem is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TooLarge(WireError):
    """A body that is too large once decompressed (the server answers 413)."""


# Metrics whose unit and kind are fixed: a batch that sends them otherwise is
# refused (wrong units must never reach the ledger). Other metrics are stored
# raw and not accounted.
KNOWN_METRICS: dict[str, tuple[str, str]] = {
    "user_cpu_seconds": ("seconds", "counter"),
    "user_memory_rss_bytes": ("bytes", "gauge"),
    "user_io_read_bytes": ("bytes", "counter"),
    "user_io_write_bytes": ("bytes", "counter"),
    "user_processes": ("1", "gauge"),
    "node_cpu_cores": ("cores", "gauge"),
    "node_memory_bytes": ("bytes", "gauge"),
    "node_hepscore23_per_core": ("HS23", "gauge"),
    "node_cpu_busy_ratio": ("ratio", "gauge"),
    "agent_spool_dropped_samples": ("1", "counter"),
    "agent_spool_batches": ("1", "gauge"),
    "agent_excluded_processes": ("1", "gauge"),  # system accounts' processes left out
    # XRootD data access (collectors/probes/xrootd.py, docs/data.md); `source` label
    "user_data_read_bytes": ("bytes", "counter"),
    "user_data_written_bytes": ("bytes", "counter"),
    "user_files_opened": ("1", "counter"),
    "xrootd_server_read_bytes": ("bytes", "counter"),
    "xrootd_server_written_bytes": ("bytes", "counter"),
    "xrootd_server_files_opened": ("1", "counter"),
    "xrootd_server_link_in_bytes": ("bytes", "counter"),
    "xrootd_server_link_out_bytes": ("bytes", "counter"),
    "xrootd_server_opens": ("1", "counter"),
    "xrootd_server_restarts": ("1", "counter"),
    # server bytes no user's record accounts for (overhead, killed transfers), by direction
    "xrootd_unattributed_bytes": ("bytes", "counter"),
    # GPUs (collectors/probes/gpu.py, docs/gpu.md); user_* ones carry the user's name
    "gpu_probe_state": ("1", "gauge"),
    "gpu_info": ("1", "gauge"),
    "gpu_mig_info": ("1", "gauge"),
    "gpu_utilization_ratio": ("ratio", "gauge"),
    "gpu_memory_used_bytes": ("bytes", "gauge"),
    "gpu_memory_total_bytes": ("bytes", "gauge"),
    "gpu_power_watts": ("watts", "gauge"),
    "gpu_energy_joules": ("joules", "counter"),
    "gpu_allocated_ratio": ("ratio", "gauge"),
    "gpu_accounting_mode": ("1", "gauge"),
    "gpu_processes_visible": ("1", "gauge"),
    "gpu_held": ("1", "gauge"),
    "user_gpus_held": ("1", "gauge"),
    "user_gpu_busy": ("1", "gauge"),
    "user_model_gpus_held": ("1", "gauge"),
    "user_model_gpu_busy": ("1", "gauge"),
    "user_gpu_energy_joules": ("joules", "counter"),
    "user_gpu_memory_bytes": ("bytes", "gauge"),
    "user_gpu_sm_ratio": ("ratio", "gauge"),
    "user_gpu_accounting_seconds": ("seconds", "counter"),
    "user_gpu_accounting_busy_seconds": ("seconds", "counter"),
}

# GPU model classes of the ledger's per-model resources (gpu_<model>_allocated_seconds);
# the probe maps every other device name to "other".
GPU_MODELS = ("h200", "h100", "a100", "a40", "a30", "l40s", "l4", "v100", "t4", "other")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Batch)


def encode(batch: Batch, *, compress: bool = False) -> bytes:
    body = _encoder.encode(batch)
    return gzip.compress(body, compresslevel=5) if compress else body


def decode(
    body: bytes,
    *,
    max_decompressed: int | None = None,
    now: float | None = None,
    max_future_skew: float | None = None,
    strict: bool = True,
) -> Batch:
    """Decode and validate raw bytes (gzip or plain JSON) into a Batch.

    Raises WireError naming the offending field. With `strict` False only the envelope
    (types, version) is checked: the server judges each record with `refusals`.
    """
    if body[:2] == b"\x1f\x8b":
        body = _gunzip(body, max_decompressed)
    try:
        batch = _decode_fast(body)
        if batch is None:
            batch = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        field, _, message = _split_msgspec_error(str(exc))
        raise WireError(field, message) from None
    except msgspec.DecodeError as exc:
        raise WireError("$", f"not valid JSON: {exc}") from None
    if strict:
        check_batch(batch, now=now, max_future_skew=max_future_skew)
    else:
        check_envelope(batch)
    return batch


# -- the fast decode ------------------------------------------------------------------------
# msgspec checks a `pattern` with a regular expression per string, about 1 us each and six
# per series: most of the time of decoding a batch (docs/benchmarks.md). The twins below are
# the records without the patterns, every other constraint the same. A body with no escape
# (backslash) and no DEL byte holds no control character in any string (JSON refuses raw
# ones), so NO_CONTROL and NO_NUL hold; the names (`Name`) are checked once each and
# remembered. Whatever the twins cannot vouch for is decoded by the full decoder, so the
# result and every error are the same.

_LaxName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_LaxText = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _LaxSeries(msgspec.Struct, forbid_unknown_fields=True):
    metric: _LaxName
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    kind: Literal["counter", "gauge"]
    labels: dict[_LaxName, Annotated[str, msgspec.Meta(max_length=256)]]
    times: list[Epoch]
    values: list[float]
    created: Epoch | None = None
    temporality: Literal["cumulative", "delta"] = "cumulative"


class _LaxEvent(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal[
        "session",
        "dask_cluster",
        "batch_job",
        "spawn",
        "dask_scale",
        "dask_worker",
        "dask_computation",
        "gpu_idle",
    ]
    id: _LaxText
    user: _LaxText
    start: Epoch
    end: Epoch | None = None
    attrs: dict[_LaxName, str | int | float | bool] = {}


class _LaxBatch(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    agent_id: _LaxText
    facility: _LaxName
    node: _LaxText
    seq: Annotated[int, msgspec.Meta(ge=0, le=SEQ_MAX)]
    sent_at: Epoch
    series: list[_LaxSeries] = []
    events: list[_LaxEvent] = []


_lax_decoder = msgspec.json.Decoder(_LaxBatch)
_name_ok = re.compile(NAME_PATTERN).search  # as msgspec applies a pattern: unanchored search
_good_names: set[str] = set()  # names that passed: metric names and label keys repeat
_GOOD_NAMES_MAX = 10_000


def _decode_fast(body: bytes) -> Batch | None:
    """The batch of `body` as `_decoder` decodes it, or None where only `_decoder` can say
    (a string with an escape or a DEL, a name not known good, any other problem)."""
    if b"\\" in body or b"\x7f" in body:
        return None
    try:
        lax = _lax_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    names = {lax.facility}
    names.update([s.metric for s in lax.series])
    for s in lax.series:
        names.update(s.labels)
    for e in lax.events:
        names.update(e.attrs)
    if not names <= _good_names:
        new = names - _good_names
        if not all(map(_name_ok, new)):
            return None
        if len(_good_names) > _GOOD_NAMES_MAX:
            _good_names.clear()
        _good_names.update(new)
    return Batch(
        lax.version, lax.agent_id, lax.facility, lax.node, lax.seq, lax.sent_at,
        [Series(s.metric, s.unit, s.kind, s.labels, s.times, s.values, s.created,
                s.temporality) for s in lax.series],
        [Event(e.kind, e.id, e.user, e.start, e.end, e.attrs) for e in lax.events],
    )  # fmt: skip


class _Envelope(_Head, forbid_unknown_fields=True):
    """A batch whose records are left undecoded: to judge each record on its own."""

    series: list[msgspec.Raw] = []
    events: list[msgspec.Raw] = []


_envelope = msgspec.json.Decoder(_Envelope)
_series_decoder = msgspec.json.Decoder(Series)
_event_decoder = msgspec.json.Decoder(Event)
MAX_RAW_KEPT = 65536  # characters of a malformed record kept for the quarantine

# Stand-ins that keep the records' positions, for records that cannot be decoded; each is
# refused (`malformed`), so nothing of it is ever applied.
_NO_SERIES = Series(metric="malformed", unit="1", kind="gauge", labels={}, times=[], values=[])
_NO_EVENT = Event(kind="session", id="malformed", user="malformed", start=0.0)


def decode_records(
    body: bytes, *, max_decompressed: int | None = None
) -> tuple[Batch, list[Refusal]]:
    """Decode a batch whose records are judged one by one: a record of the wrong shape (a
    string among the values, an unknown field, a bad label name) is refused on its own with
    reason `malformed` (its position keeps a stand-in, its text is in the refusal's `raw`);
    only an envelope that cannot be decoded (not JSON, a bad `seq`, `agent_id`, `facility`,
    an unsupported `version`) raises WireError for the whole batch."""
    if body[:2] == b"\x1f\x8b":
        body = _gunzip(body, max_decompressed)
    try:
        batch = _decode_fast(body)
        if batch is None:
            batch = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        if not isinstance(exc, msgspec.ValidationError):
            raise WireError("$", f"not valid JSON: {exc}") from None
        batch, refused = _decode_one_by_one(body)
    else:
        refused = []
    check_envelope(batch)
    return batch, refused


def _decode_one_by_one(body: bytes) -> tuple[Batch, list[Refusal]]:
    try:
        env = _envelope.decode(body)
    except msgspec.ValidationError as exc:
        field, _, message = _split_msgspec_error(str(exc))
        raise WireError(field, message) from None
    except msgspec.DecodeError as exc:  # broken JSON after the first type error
        raise WireError("$", f"not valid JSON: {exc}") from None
    refused: list[Refusal] = []
    series: list[Series] = []
    events: list[Event] = []
    for kind, raws, decoder, out, stand_in in (
        ("series", env.series, _series_decoder, series, _NO_SERIES),
        ("event", env.events, _event_decoder, events, _NO_EVENT),
    ):
        for i, raw in enumerate(raws):
            try:
                out.append(decoder.decode(raw))  # type: ignore[attr-defined]
            except msgspec.ValidationError as exc:
                field, _, message = _split_msgspec_error(str(exc))
                where = f"$.{'series' if kind == 'series' else 'events'}[{i}]"
                refused.append(Refusal(
                    kind, i, where + field[1:], "malformed",  # type: ignore[arg-type]
                    f"{message} (the record cannot be read; the rest of its batch can)",
                    bytes(raw)[:MAX_RAW_KEPT].decode("utf-8", "replace"),
                ))  # fmt: skip
                out.append(stand_in)  # type: ignore[attr-defined]
    batch = Batch(
        version=env.version, agent_id=env.agent_id, facility=env.facility, node=env.node,
        seq=env.seq, sent_at=env.sent_at, series=series, events=events,
    )  # fmt: skip
    return batch, refused


# Labels the server derives and a producer may not send: the facility comes from the
# credential that posted the batch, the VO, group and member from the identity map
# (docs/security.md). Letting a series carry one would let a producer write as another
# facility or member in the time-series store.
RESERVED_LABELS = frozenset({"facility", "vo", "group", "member"})


class Refusal(msgspec.Struct, frozen=True):
    """One record (a series or an event) of a batch that cannot be accepted, and why.

    `reason` is a stable machine-readable code (counted in /metrics, kept in the server's
    quarantine); `field` and `message` say where and what for a person."""

    # "line": of a line-protocol body (its number); "metric": of an OTLP request (its ordinal)
    kind: Literal["series", "event", "line", "metric"]
    index: int
    field: str
    reason: str
    message: str
    raw: str | None = None  # the record as sent, when it could not be decoded (`malformed`)


def check_envelope(batch: Batch) -> None:
    """What refuses a batch as a whole: the parts that are not records."""
    if batch.version != WIRE_VERSION:
        raise WireError(
            "$.version", f"unsupported wire version {batch.version}, expected {WIRE_VERSION}"
        )


def check_batch(
    batch: Batch, *, now: float | None = None, max_future_skew: float | None = None
) -> None:
    """Every rule, strictly: raises WireError for the first problem of the batch."""
    check_envelope(batch)
    problems = refusals(batch, now=now, max_future_skew=max_future_skew)
    if problems:
        raise WireError(problems[0].field, problems[0].message)


def refusals(
    batch: Batch,
    *,
    now: float | None = None,
    max_future_skew: float | None = None,
    max_value: float | None = None,
    max_event_age: float | None = None,
    max_event_duration: float | None = None,
) -> list[Refusal]:
    """Cross-field rules that the types cannot state, per record: the first problem of each
    series and event that breaks one (the others are fine on their own). The bounds are the
    server's settings (AFMON_MAX_FUTURE_SKEW_SECONDS, AFMON_MAX_SAMPLE_VALUE,
    AFMON_MAX_EVENT_AGE_DAYS, AFMON_MAX_EVENT_DURATION_DAYS); None leaves a bound out."""
    out: list[Refusal] = []
    limit = None if now is None or max_future_skew is None else now + max_future_skew
    vmax = _FLOAT_MAX if max_value is None else min(max_value, _FLOAT_MAX)
    for i, s in enumerate(batch.series):
        if _plain(s, vmax, limit):
            continue
        problem = _series_problem(s, f"$.series[{i}]", limit, now, max_future_skew)
        if problem is None and max_value is not None and s.values:
            if max(map(abs, s.values)) > max_value:
                problem = (f"$.series[{i}].values", "value_too_large",
                           f"a value of series {s.metric} is beyond {max_value:g} "
                           "(AFMON_MAX_SAMPLE_VALUE)")  # fmt: skip
        if problem is not None:
            out.append(Refusal("series", i, *problem))
    oldest = None if now is None or max_event_age is None else now - max_event_age
    for i, e in enumerate(batch.events):
        where = f"$.events[{i}]"
        if e.end is not None and e.end < e.start:
            out.append(Refusal("event", i, f"{where}.end", "ends_before_start",
                               f"event {e.id} ends before it starts"))  # fmt: skip
        elif limit is not None and max(e.start, e.end or 0.0) > limit:
            out.append(Refusal("event", i, where, "future",
                               f"event {e.id} is in the future (clock skew)"))  # fmt: skip
        elif oldest is not None and e.start < oldest:
            out.append(Refusal("event", i, f"{where}.start", "too_old",
                               f"event {e.id} started {(now - e.start) / 86400:.0f} days ago, "
                               "before AFMON_MAX_EVENT_AGE_DAYS"))  # fmt: skip
        elif (
            max_event_duration is not None
            and e.end is not None
            and e.end - e.start > max_event_duration
        ):
            out.append(Refusal("event", i, f"{where}.end", "too_long",
                               f"event {e.id} lasted {(e.end - e.start) / 86400:.1f} days, "
                               f"longer than AFMON_MAX_EVENT_DURATION_DAYS "
                               f"({max_event_duration / 86400:g})"))  # fmt: skip
    return out


_FLOAT_MAX = sys.float_info.max


def _plain(s: Series, vmax: float, limit: float | None) -> bool:
    """Whether `s` is the common record, one sample, and certainly breaks no rule of
    `_series_problem` nor the value bound `vmax`: a few operations instead of the rules one
    by one (a finite value >= 0 and <= vmax passes every value rule)."""
    values, times = s.values, s.times
    if len(values) != 1 or len(times) != 1 or not 0.0 <= values[0] <= vmax:
        return False
    if limit is not None and times[0] > limit:
        return False
    expected = KNOWN_METRICS.get(s.metric)
    if expected is not None and (expected[0] != s.unit or expected[1] != s.kind):
        return False
    if s.temporality != "cumulative" and s.kind != "counter":
        return False
    return RESERVED_LABELS.isdisjoint(s.labels)


def _series_problem(
    s: Series, where: str, limit: float | None, now: float | None, skew: float | None
) -> tuple[str, str, str] | None:
    """(field, reason, message) of the first rule series `s` breaks, or None."""
    reserved = RESERVED_LABELS.intersection(s.labels)
    if reserved:
        name = min(reserved)
        source = "the credential" if name == "facility" else "the identity map"
        return (
            f"{where}.labels.{name}",
            "reserved_label",
            f"label {name!r} of series {s.metric} is reserved: the server sets it from "
            f"{source}; remove it",
        )
    if len(s.times) != len(s.values):
        return (
            f"{where}.values",
            "length_mismatch",
            f"{len(s.values)} values for {len(s.times)} times in series {s.metric}",
        )
    if not all(map(math.isfinite, s.values)):
        return f"{where}.values", "non_finite", f"non-finite value in series {s.metric}"
    if not all(map(operator.lt, s.times, s.times[1:])):  # C speed: this runs per sample
        return (
            f"{where}.times",
            "times_not_increasing",
            f"times of series {s.metric} must strictly increase",
        )
    expected = KNOWN_METRICS.get(s.metric)
    if expected is not None:
        unit, kind = expected
        if s.unit != unit:
            return (
                f"{where}.unit",
                "wrong_unit",
                f"metric {s.metric} is in {unit!r}, not {s.unit!r}",
            )
        if s.kind != kind:
            return f"{where}.kind", "wrong_kind", f"metric {s.metric} is a {kind}, not a {s.kind}"
    if s.temporality == "delta" and s.kind != "counter":
        return (
            f"{where}.temporality",
            "wrong_kind",
            f"series {s.metric} is a gauge: only a counter can be sent as deltas",
        )
    if s.kind == "counter" and s.values and min(s.values) < 0:
        return f"{where}.values", "negative_counter", f"counter {s.metric} has a negative value"
    if expected is not None and s.values and min(s.values) < 0:  # no known gauge goes below 0
        return f"{where}.values", "negative_gauge", f"gauge {s.metric} has a negative value"
    if limit is not None and s.times and s.times[-1] > limit:
        assert now is not None and skew is not None
        return (
            f"{where}.times",
            "future",
            f"sample at {s.times[-1]:.3f} is {s.times[-1] - now:.0f} s in the future "
            f"(clock skew over {skew:.0f} s)",
        )
    return None


def without(batch: Batch, refused: list[Refusal]) -> Batch:
    """The batch less the refused records."""
    if not refused:
        return batch
    series = {r.index for r in refused if r.kind == "series"}
    events = {r.index for r in refused if r.kind == "event"}
    return msgspec.structs.replace(
        batch,
        series=[s for i, s in enumerate(batch.series) if i not in series],
        events=[e for i, e in enumerate(batch.events) if i not in events],
    )


def _gunzip(body: bytes, limit: int | None) -> bytes:
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(body, limit or 0)
    except zlib.error as exc:
        raise WireError("$", f"bad gzip body: {exc}") from None
    if limit is not None and d.unconsumed_tail:
        raise TooLarge("$", f"decompressed body is larger than {limit} bytes")
    return out


def _split_msgspec_error(text: str) -> tuple[str, str, str]:
    # msgspec says e.g. "Expected `float`, got `str` - at `$.series[0].values[3]`"
    head, sep, where = text.rpartition(" - at `")
    if sep:
        return where.rstrip("`"), "", head
    return "$", "", text
