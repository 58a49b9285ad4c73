"""Applying one decoded batch: exactly once, in one transaction.

The raw samples, the ledger increments, the events, the series state and the
(agent, seq) guard are written together, so a batch is either wholly applied
or not at all, and a batch seen again is acknowledged without being applied.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain, repeat
from typing import Literal

import msgspec
from sqlalchemy import Connection, Engine

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityMap, MemberRef
from afmon.aggregator.ingest import quarantine as quarantined
from afmon.aggregator.ingest.admission import SeriesKey, admit, labels_json, series_key
from afmon.aggregator.ingest.capacity import capacity_refusals
from afmon.aggregator.ingest.delta import cumulate
from afmon.aggregator.ingest.events import apply_events, ensure_unmapped
from afmon.aggregator.ingest.group_commit import GroupCommit
from afmon.aggregator.ingest.late import LateSamples, SeriesState, place_late
from afmon.aggregator.ingest.limits import Cardinality, Limits, check_size, label_refusals
from afmon.aggregator.ingest.nodes import node_capacity, write_node_capacity
from afmon.aggregator.ingest.quarantine import StillRefused
from afmon.aggregator.ledger.base import (
    ACCOUNTED_METRICS,
    HOUR,
    Increments,
    counter_increases,
    counter_increases_per_hour,
    fresh_count,
    gauge_integral,
)
from afmon.aggregator.store.db import insert_rows, placeholder
from afmon.aggregator.store.rollup import DAY
from afmon.aggregator.store.schema import RESOURCES
from afmon.aggregator.store.tsdb import Outbox, Points, series_head
from afmon.collectors import wire

log = logging.getLogger(__name__)


# Raw series that afmon reads back from the `sample` table (query/operations.py: data_servers,
# gpu_utilisation; signals.py: agent_spool_growth_batches, gpu_held; availability.py:
# service_up): kept there even when raw samples otherwise live only in the time-series store
# (AFMON_TSDB_RAW_ONLY). Node-level series, a small share of the samples.
READ_BACK_METRICS = frozenset(
    {
        "xrootd_server_read_bytes",
        "xrootd_server_written_bytes",
        "xrootd_server_files_opened",
        "xrootd_server_link_out_bytes",
        "xrootd_server_link_in_bytes",
        "xrootd_server_restarts",
        "xrootd_unattributed_bytes",
        "gpu_utilization_ratio",
        "gpu_held",
        "agent_spool_batches",
        "service_up",
    }
)


def first_per_record(refused: Iterable[wire.Refusal]) -> list[wire.Refusal]:
    """One refusal per record, the first found (a record that cannot be read is refused as
    `malformed` only, not also for what its stand-in breaks)."""
    seen: set[tuple[str, int]] = set()
    out: list[wire.Refusal] = []
    for r in refused:
        if (r.kind, r.index) not in seen:
            seen.add((r.kind, r.index))
            out.append(r)
    return out


def _in_batch(
    found: Sequence[wire.Refusal], batch: wire.Batch, refused: Sequence[wire.Refusal]
) -> list[wire.Refusal]:
    """Event refusals found in the batch less its `refused` records, renumbered as in the
    batch as sent (the answer and the quarantine name those positions)."""
    gone = {r.index for r in refused if r.kind == "event"}
    kept = [i for i in range(len(batch.events)) if i not in gone]
    out = []
    for r in found:
        i = kept[r.index]
        field = r.field.replace(f"$.events[{r.index}]", f"$.events[{i}]", 1)
        out.append(msgspec.structs.replace(r, index=i, field=field))
    return out


def kept_when_raw_only(s: wire.Series) -> bool:
    """Whether the database keeps the samples of `s` even when raw samples live only in the
    time-series store: those afmon reads back, and those of accounted series (a late sample is
    placed among its stored neighbours, ingest/late.py)."""
    return s.metric in READ_BACK_METRICS or (s.metric in ACCOUNTED_METRICS and "user" in s.labels)


FreshSamples = tuple[int, list[float], list[float]]
"""A series id with the times and values of its samples that are new to the store."""


def sample_rows(fresh: Iterable[FreshSamples]) -> Iterator[tuple[int, float, float]]:
    """The rows (series id, time, value) of the fresh samples, made lazily: the driver drops
    each row before it takes the next, so `zip` hands it one reused tuple and a batch of
    samples allocates no row objects (no list of tuples, no garbage collection)."""
    return chain.from_iterable(zip(repeat(sid), times, values) for sid, times, values in fresh)


@dataclass(frozen=True)
class IngestResult:
    """`partial`: applied, less the `refused` records (quarantined)."""

    status: Literal["applied", "partial", "duplicate"]
    seq: int
    samples: int = 0
    stale_samples: int = 0
    events: int = 0
    ledger_rows: int = 0
    refused: tuple[wire.Refusal, ...] = ()


class Ingestor:
    def __init__(
        self,
        engine: Engine,
        identity: IdentityMap,
        settings: ServerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._identity = identity
        self._settings = settings
        self._clock = clock
        self._series_ids: dict[SeriesKey, int] = {}
        self._limits = Limits.from_settings(settings)
        self._cardinality = Cardinality(
            self._limits, clock, now=clock, active_seconds=settings.metrics_node_silence_seconds
        )
        self._outbox = Outbox(engine) if settings.tsdb_url else None  # docs/scale.md
        self._group = GroupCommit(engine, settings.group_commit_batches(engine.dialect.name))
        self._all_in_database = not settings.tsdb_raw_only
        p = placeholder(engine)
        self._p = p
        self._pg = engine.dialect.name == "postgresql"
        self._for_update = "" if engine.dialect.name == "sqlite" else " FOR UPDATE"
        self._sql_ledger = (
            "INSERT INTO usage (facility, vo, grp, member_id, resource, hour, amount, unit) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (facility, vo, grp, member_id, resource, hour) "
            "DO UPDATE SET amount = usage.amount + excluded.amount"
        )
        self._sql_ledger_day = (
            "INSERT INTO usage_day (facility, vo, grp, member_id, resource, day, amount, unit) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (facility, vo, grp, member_id, resource, day) "
            "DO UPDATE SET amount = usage_day.amount + excluded.amount"
        )
        # the hours a federation upstream has to be sent again (docs/federation.md)
        self._sql_changed = (
            f"INSERT INTO ledger_change (facility, hour, version) VALUES ({p}, {p}, 1) "
            "ON CONFLICT (facility, hour) DO UPDATE SET version = ledger_change.version + 1"
        )
        self._sql_latency = (
            "INSERT INTO latency (facility, vo, grp, member_id, kind, profile, hour, le, count, "
            f"sum_seconds) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (facility, vo, grp, member_id, kind, profile, hour, le) DO UPDATE SET "
            "count = latency.count + excluded.count, "
            "sum_seconds = latency.sum_seconds + excluded.sum_seconds"
        )

    def apply(
        self,
        batch: wire.Batch,
        refused: Sequence[wire.Refusal] = (),
        *,
        quarantine: bool = True,
    ) -> IngestResult:
        """Apply a batch exactly once, less its refused records: those the route found
        (`refused`, from `wire.refusals`) and those only the server can judge (labels per
        series, repeated series, node and GPU limits). They are quarantined in the same
        transaction, or, with `quarantine` False (a replay), make the whole call a no-op that
        raises `StillRefused`. Raises `wire.WireError` (or its `LimitExceeded`) for a batch
        refused as a whole, with nothing of it written."""
        check_size(batch, self._limits)
        refused = first_per_record([*refused, *label_refusals(batch, self._limits)])
        new_series: dict[SeriesKey, int] = {}
        result = self._group.run(
            lambda conn: self._apply_batch(conn, batch, list(refused), quarantine, new_series)
        )
        # Only ids of committed series may be remembered: a rolled-back id can be reused.
        self._series_ids.update(new_series)
        return result

    def _apply_batch(
        self,
        conn: Connection,
        batch: wire.Batch,
        refused: list[wire.Refusal],
        quarantine: bool,
        new_series: dict[SeriesKey, int],
    ) -> IngestResult:
        """`apply`'s work inside its (group's) transaction; `new_series` gets the ids of the
        series records it made."""
        p = self._p
        now = self._clock()
        claimed = conn.exec_driver_sql(
            "INSERT INTO applied_batch (agent_id, seq, facility, received_at, samples) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
            (batch.agent_id, batch.seq, batch.facility, now, batch.sample_count),
        ).rowcount
        if claimed == 0:
            return IngestResult("duplicate", batch.seq)
        keys = [series_key(batch.facility, s) for s in batch.series]
        more, own_node = admit(conn, batch, keys, refused, self._series_ids, self._cardinality)
        refused += more
        gone = {r.index for r in refused if r.kind == "series"}
        ids = self._series_ids_for(conn, batch, keys, new_series, gone)
        state = self._series_state(conn, [sid for sid in ids if sid is not None])
        sent = batch  # as sent: what the quarantine keeps (a replay converts it again)
        batch, out_of_order = cumulate(batch, ids, state)
        for r in out_of_order:
            ids[r.index] = None
        refused += out_of_order
        nodes, reported = node_capacity(conn, p, batch, ids, state)
        over = capacity_refusals(
            batch,
            ids,
            {sid: (t, v) for sid, (t, v, _f) in state.items()},
            {n: (c.get("cpu_cores"), c.get("memory_bytes")) for n, c in nodes.items()},
            self._settings.capacity_slack,
        )
        for r in over:
            ids[r.index] = None
        refused += over
        too_old, late = place_late(
            conn,
            batch,
            ids,
            state,
            self._settings.late_sample_window_seconds,
            self._kept,
            p,
        )
        refused += too_old
        if refused and not quarantine:
            raise StillRefused(refused)  # rolls the claim back: a later replay may apply
        clean = wire.without(batch, refused)
        if len(clean.series) < len(ids):
            gone = {r.index for r in refused if r.kind == "series"}
            kept = [i for i in range(len(ids)) if i not in gone]
            late = {j: late[i] for j, i in enumerate(kept) if i in late}
            ids = [ids[i] for i in kept]
        result = self._apply(conn, clean, ids, state, late, nodes, reported, now, own_node)  # type: ignore[arg-type]
        if result.refused:  # events whose attributes their rule refused
            refused += _in_batch(result.refused, batch, refused)
            if not quarantine:
                raise StillRefused(refused)
        if refused:
            quarantined.store(conn, sent, refused, now, self._settings.quarantine_keep)
            result = replace(result, status="partial", refused=tuple(refused))
        return result

    def judge(self, batch: wire.Batch) -> list[wire.Refusal]:
        """The records of `batch` that break a rule on their own (`wire.refusals`, with this
        server's bounds and clock): what `apply` should be given as `refused`."""
        s = self._settings
        return wire.refusals(
            batch,
            now=self._clock(),
            max_future_skew=s.max_future_skew_seconds,
            max_value=s.max_sample_value,
            max_event_age=s.max_event_age_days * 86400,
            max_event_duration=s.max_event_duration_days * 86400,
        )

    # -- the parts of one transaction -------------------------------------------------

    def _kept(self, s: wire.Series) -> bool:
        """Whether the samples of `s` go into the `sample` table (all, or with
        AFMON_TSDB_RAW_ONLY those `kept_when_raw_only`)."""
        return self._all_in_database or kept_when_raw_only(s)

    def _apply(
        self,
        conn: Connection,
        batch: wire.Batch,
        ids: list[int],
        state: dict[int, SeriesState],
        late: dict[int, LateSamples],
        nodes: dict[str, dict[str, float]],
        reported: dict[str, dict[str, float]],
        now: float,
        own_node: bool = True,
    ) -> IngestResult:
        facility = batch.facility
        write_node_capacity(conn, self._p, facility, reported, now)
        hepscore = {n: c["hepscore23_per_core"] for n, c in nodes.items()
                    if c.get("hepscore23_per_core")}  # fmt: skip
        inc = Increments()
        members: dict[str, MemberRef] = {}
        fresh: list[FreshSamples] = []  # into the `sample` table
        points: list[Points] = []  # into the time-series store's outbox
        new_state: list[tuple[float, float, float, int]] = []
        firsts: list[tuple[float, int, float]] = []  # a late sample before the first one
        stale = written = 0
        gap = self._settings.gauge_max_gap_seconds
        default_factor = self._settings.default_hepscore23_per_core
        amounts = inc.amounts
        spans: dict[str, tuple[MemberRef, float, float]] = {}  # user -> its last resolved span
        for i, (s, sid) in enumerate(zip(batch.series, ids, strict=True)):
            times, values = s.times, s.values
            last_t, last_v, first_t = state[sid]
            placed = late.get(i)
            if placed is None and len(times) == 1:
                # the common record, one sample and nothing late: the same pieces as below,
                # each to its own (hour, member) key, so added straight to the increments
                t = times[0]
                if last_t is not None and t <= last_t:
                    continue
                written += 1
                if self._all_in_database or kept_when_raw_only(s):
                    fresh.append((sid, times, values))
                if self._outbox is not None:
                    points.append((series_head(batch, s), times, values))
                new_state.append((t, values[0], t, sid))
                rule = ACCOUNTED_METRICS.get(s.metric)
                user = s.labels.get("user")
                if rule is None or user is None:
                    continue
                if rule.how == "counter":
                    pieces: Iterable[tuple[float, float]] | None = counter_increases(
                        times, values, last_t, last_v, s.created
                    )
                else:
                    pieces = gauge_integral(times, values, last_t, last_v, gap)
                resource = rule.resource_for(s.labels)  # checked in `_admit`
                normalised = rule.normalised
                factor = hepscore.get(s.labels.get("node", batch.node), default_factor)
                unverified = rule.unverified if s.labels.get("identity") == "asserted" else None
                span = spans.get(user)
                for pt, amount in pieces:
                    if span is None or not span[1] <= pt < span[2]:
                        span = spans[user] = self._identity.resolve_span(facility, user, pt)
                    ref = span[0]
                    members[ref.id] = ref
                    h = int(pt // HOUR) * HOUR
                    amounts[(facility, ref.vo, ref.grp, ref.id, resource, h)] += amount
                    if normalised is not None:
                        amounts[(facility, ref.vo, ref.grp, ref.id, normalised, h)] += (
                            amount * factor
                        )
                    if unverified is not None:
                        amounts[(facility, ref.vo, ref.grp, ref.id, unverified, h)] += amount
                continue
            n = fresh_count(times, last_t)
            if placed is not None:
                stale += placed.repeats
                if placed.times:
                    written += len(placed.times)
                    if self._kept(s):
                        fresh.append((sid, placed.times, placed.values))
                    if self._outbox is not None:
                        points.append((series_head(batch, s), placed.times, placed.values))
                    if first_t is not None and placed.times[0] < first_t:
                        firsts.append((placed.times[0], sid, placed.times[0]))
                elif n == 0:
                    continue
            elif n == 0:
                continue
            if 0 < n < len(times):  # copies only when part of the series was seen before
                times, values = times[-n:], values[-n:]
            if n:
                written += n
                if self._kept(s):
                    fresh.append((sid, times, values))
                if self._outbox is not None:
                    points.append((series_head(batch, s), times, values))
                new_state.append((times[-1], values[-1], times[0], sid))
            rule = ACCOUNTED_METRICS.get(s.metric)
            user = s.labels.get("user")
            if rule is None or user is None:
                continue
            resource = rule.resource_for(s.labels)  # checked in `_admit`
            node = s.labels.get("node", batch.node)
            pieces = None
            if n == 0:
                pieces = ()
            elif rule.how == "counter":
                # per hour when the whole series maps to one member, else per sample
                if self._one_member(facility, user, times[0], times[-1]):
                    pieces = counter_increases_per_hour(times, values, last_t, last_v, s.created)
                if pieces is None:
                    pieces = counter_increases(times, values, last_t, last_v, s.created)
            else:
                pieces = gauge_integral(times, values, last_t, last_v, gap)
            if placed is not None and placed.times:
                pieces = chain(pieces, placed.corrections(rule, s.created, gap))
            per_hour: dict[tuple[int, str], float] = defaultdict(float)
            rid, lo, hi = "", 0.0, -1.0
            for t, amount in pieces:
                if not lo <= t < hi:
                    ref, lo, hi = self._identity.resolve_span(facility, user, t)
                    members[ref.id] = ref
                    rid = ref.id
                per_hour[(int(t // HOUR) * HOUR, rid)] += amount
            factor = hepscore.get(node, default_factor)
            unverified = rule.unverified if s.labels.get("identity") == "asserted" else None
            for (h, rid), amount in per_hour.items():
                inc.add(facility, members[rid], resource, h, amount)
                if rule.normalised is not None:
                    inc.add(facility, members[rid], rule.normalised, h, amount * factor)
                if unverified is not None:
                    inc.add(facility, members[rid], unverified, h, amount)
        if fresh:
            insert_rows(conn, "sample", ("series_id", "time", "value"), sample_rows(fresh))
        if points and self._outbox is not None:
            self._outbox.stage(conn, points, written, now)
        if new_state:
            self._write_state(conn, new_state)
        if firsts:
            conn.exec_driver_sql(
                f"UPDATE series SET first_time = {self._p} WHERE id = {self._p} "
                f"AND first_time > {self._p}",
                firsts,
            )
        events, bad_events = apply_events(
            conn,
            self._p,
            self._for_update,
            batch,
            inc,
            lambda f, user, when: self._member(f, user, when, members),
            hepscore,
            self._settings.default_hepscore23_per_core,
        )
        ensure_unmapped(conn, self._p, members)
        if inc.amounts:
            conn.exec_driver_sql(
                self._sql_ledger,
                # in key order, so that concurrent workers lock rows in the same order
                [
                    (*key, amount, RESOURCES[key[4]].unit)
                    for key, amount in sorted(inc.amounts.items())
                ],
            )
            daily: dict[tuple[str, str, str, str, str, int], float] = defaultdict(float)
            for (f, vo, grp, mid, resource, hour), amount in inc.amounts.items():
                daily[(f, vo, grp, mid, resource, hour // DAY * DAY)] += amount
            conn.exec_driver_sql(
                self._sql_ledger_day,
                [(*key, amount, RESOURCES[key[4]].unit) for key, amount in sorted(daily.items())],
            )
        if inc.batch:  # the batch resources by account, QoS and partition (docs/batch.md)
            key_columns = "facility, vo, grp, member_id, account, qos, partition, resource, hour"
            conn.exec_driver_sql(
                f"INSERT INTO batch_usage ({key_columns}, amount, unit) "
                f"VALUES ({', '.join([self._p] * 11)}) ON CONFLICT ({key_columns}) "
                "DO UPDATE SET amount = batch_usage.amount + excluded.amount",
                [
                    (*key, amount, RESOURCES[key[7]].unit)
                    for key, amount in sorted(inc.batch.items())  # key order, as above
                ],
            )
        if inc.latencies:
            conn.exec_driver_sql(
                self._sql_latency, [(*k, int(c), s) for k, (c, s) in inc.latencies.items()]
            )
        if inc.amounts or inc.latencies:  # last: the hours' rows are locked only till commit
            changed = {(k[0], k[5]) for k in inc.amounts} | {(k[0], k[6]) for k in inc.latencies}
            conn.exec_driver_sql(self._sql_changed, sorted(changed))
        if own_node:
            self._touch_agent(conn, batch, now, written)
        return IngestResult(
            "applied", batch.seq, written, stale, events, len(inc), tuple(bad_events)
        )

    def _one_member(self, facility: str, user: str, first: float, last: float) -> bool:
        """Whether `user` maps to the same member from `first` to `last` (inclusive)."""
        _ref, lo, hi = self._identity.resolve_span(facility, user, first)
        return lo <= first and last < hi

    def _member(
        self, facility: str, user: str, when: float, seen: dict[str, MemberRef]
    ) -> MemberRef:
        ref = self._identity.resolve(facility, user, when)
        seen[ref.id] = ref
        return ref

    def _series_ids_for(
        self,
        conn: Connection,
        batch: wire.Batch,
        keys: list[SeriesKey],
        new_series: dict[SeriesKey, int],
        skip: set[int],
    ) -> list[int | None]:
        """The id of each series record (None for those in `skip`, refused), made for those
        the store does not have yet."""
        p = self._p
        ids: list[int | None] = []
        for i, (s, key) in enumerate(zip(batch.series, keys, strict=True)):
            if i in skip:
                ids.append(None)
                continue
            sid = self._series_ids.get(key) or new_series.get(key)
            if sid is None:
                labels = labels_json(s)
                conn.exec_driver_sql(
                    "INSERT INTO series (facility, metric, labels, unit, kind, node, local_user) "
                    f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
                    (
                        batch.facility,
                        s.metric,
                        labels,
                        s.unit,
                        s.kind,
                        s.labels.get("node", batch.node),
                        s.labels.get("user"),
                    ),
                )
                sid = conn.exec_driver_sql(
                    f"SELECT id FROM series WHERE facility = {p} AND metric = {p} AND labels = {p}",
                    (batch.facility, s.metric, labels),
                ).scalar_one()
                new_series[key] = sid
            ids.append(sid)
        return ids

    def _series_state(self, conn: Connection, ids: list[int]) -> dict[int, SeriesState]:
        state: dict[int, SeriesState] = {}
        unique = sorted(set(ids))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            marks = ", ".join([self._p] * len(chunk))
            rows = conn.exec_driver_sql(
                f"SELECT id, last_time, last_value, first_time FROM series WHERE id IN ({marks})"
                f"{self._for_update}",
                tuple(chunk),
            )
            state.update((r[0], (r[1], r[2], r[3])) for r in rows.fetchall())
        return state

    def _write_state(
        self, conn: Connection, new_state: list[tuple[float, float, float, int]]
    ) -> None:
        """Each series' newest (time, value), and its first time when it had none. On
        PostgreSQL in one statement: an executemany is a round trip per series there."""
        if self._pg:
            times, values, firsts, ids = zip(*new_state, strict=True)
            conn.exec_driver_sql(
                "UPDATE series SET last_time = u.t, last_value = u.v, "
                "first_time = COALESCE(series.first_time, u.f) FROM unnest("
                "%s::float8[], %s::float8[], %s::float8[], %s::integer[]) AS u(t, v, f, id) "
                "WHERE series.id = u.id",
                (list(times), list(values), list(firsts), list(ids)),
            )
            return
        p = self._p
        conn.exec_driver_sql(
            f"UPDATE series SET last_time = {p}, last_value = {p}, "
            f"first_time = COALESCE(first_time, {p}) WHERE id = {p}",
            new_state,
        )

    def _touch_agent(self, conn: Connection, batch: wire.Batch, now: float, samples: int) -> None:
        p = self._p
        conn.exec_driver_sql(
            "INSERT INTO agent (agent_id, facility, node, last_seen, last_seq, batches, samples) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, 1, {p}) ON CONFLICT (agent_id) DO UPDATE SET "
            "facility = excluded.facility, node = excluded.node, last_seen = excluded.last_seen, "
            "last_seq = excluded.last_seq, batches = agent.batches + 1, "
            "samples = agent.samples + excluded.samples",
            (batch.agent_id, batch.facility, batch.node, now, batch.seq, samples),
        )
