"""A simulated facility that drives the real agent-to-ingest path.

It behaves like a fleet of node agents: it posts wire batches over HTTP to the
aggregator and never touches the database. Everything it sends is derived
from a seeded model (members of VOs opening interactive sessions on nodes,
with CPU, memory and IO load), and it keeps the exact ground truth of what it
sent, so tests can compare the ledger against it.

Quantities are chosen to be exact in binary floating point (CPU per tick is a
multiple of interval/4, memory a whole number of GiB, IO whole bytes), so
"the ledger equals the truth" is tested with ==, not with a tolerance.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx

from afmon.collectors import wire
from afmon.collectors.simulator_extras import RichFacility
from afmon.collectors.simulator_model import GroundTruth, SimMember, SimSession

GIB = 1024**3
VO_GROUPS = {
    "atlas": ("/atlas/higgs", "/atlas/top", "/atlas/exotics"),
    "cms": ("/cms/uscms", "/cms/btag"),
    "lhcb": ("/lhcb/charm",),
}
ISSUERS = {
    "atlas": "https://atlas-auth.cern.ch/",
    "cms": "https://cms-auth.web.cern.ch/",
    "lhcb": "https://lhcb-auth.web.cern.ch/",
}
NODE_CORES = 64
NODE_MEMORY = 256 * GIB


@dataclass
class _NodeUser:
    cpu: float = 0.0
    read: float = 0.0
    write: float = 0.0
    created: float = 0.0
    memory: float = 0.0  # last sampled resident memory (bytes)


class FacilitySimulator:
    """Seeded model of a facility: `batches(start, end)` yields what its agents would send."""

    def __init__(
        self,
        facility: str = "demo-af",
        nodes: int = 8,
        members_per_vo: int = 5,
        vos: tuple[str, ...] = ("atlas", "cms", "lhcb"),
        seed: int = 1,
        interval: float = 10.0,
        hepscore23_per_core: float = 12.5,
        sessions_per_member_day: float = 3.0,
        unmapped_accounts: int = 1,
        rich: bool = False,
    ) -> None:
        """`rich` adds spawn waits, Dask clusters, batch jobs, GPUs (per user, and per device
        as the GPU probe reports them), data access with its XRootD cache server's counters
        and the agents' spools (collectors/simulator_extras.py), as a full facility would
        report them: enough for every dashboard panel and alert rule to have data."""
        if interval <= 0 or nodes <= 0:
            raise ValueError("interval and nodes must be positive")
        self.facility = facility
        self.interval = interval
        self.hepscore = hepscore23_per_core
        self.nodes = [f"sim-node{i:03d}" for i in range(1, nodes + 1)]
        self._rng = random.Random(seed)
        self._p_start = sessions_per_member_day * interval / 86400
        self.members: list[SimMember] = []
        for vo in vos:
            for i in range(1, members_per_vo + 1):
                self.members.append(
                    SimMember(
                        local=f"{vo}{i:03d}",
                        vo=vo,
                        group=VO_GROUPS[vo][(i - 1) % len(VO_GROUPS[vo])],
                        subject=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                        display_name=f"{vo.upper()} analyst {i}",
                    )
                )
        for i in range(1, unmapped_accounts + 1):
            self.members.append(SimMember(f"guest{i:02d}", "", "", "", f"guest {i}", mapped=False))
        self.truth = GroundTruth()
        self._run = uuid.uuid4().hex[:8]  # like a real agent's id: new for every process
        self._seq: dict[str, int] = defaultdict(int)
        self._active: dict[str, SimSession] = {}
        self._state: dict[tuple[str, str], _NodeUser] = {}
        self._tick: float | None = None
        self._rich = RichFacility(self, seed) if rich else None

    @property
    def simulated_until(self) -> float:
        """Where the next call of `batches` goes on from (0 before the first)."""
        return self._tick or 0.0

    # -- identity -----------------------------------------------------------------------

    def identity_toml(self, extra_members: str = "") -> str:
        """The identity map for the simulated members (unmapped accounts left out)."""
        vos = sorted({m.vo for m in self.members if m.mapped})
        out = [f'[vos.{vo}]\nissuer = "{ISSUERS[vo]}"\n' for vo in vos]
        for m in self.members:
            if not m.mapped:
                continue
            groups = f'["/{m.vo}", "{m.group}"]'
            out.append(
                f'[[members]]\nvo = "{m.vo}"\nsubject = "{m.subject}"\n'
                f'display_name = "{m.display_name}"\ngroups = {groups}\ngroup = "{m.group}"\n'
                f'accounts = [{{ facility = "{self.facility}", local = "{m.local}" }}]\n'
            )
        return "\n".join(out) + extra_members

    def member_ids(self) -> dict[str, str]:
        """local account -> member id (issuer|subject) as the aggregator keys it."""
        return {m.local: f"{ISSUERS[m.vo]}|{m.subject}" for m in self.members if m.mapped}

    # -- the model ----------------------------------------------------------------------

    def batches(self, start: float, end: float, ticks_per_batch: int = 60) -> Iterator[wire.Batch]:
        """Simulate ticks in [start, end) and yield one batch per node per chunk of ticks.

        Successive calls continue where the last one stopped.
        """
        t = self._tick if self._tick is not None else self.interval * (start // self.interval)
        while t < end:
            chunk_end = min(end, t + ticks_per_batch * self.interval)
            series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], wire.Series]] = {
                n: {} for n in self.nodes
            }
            events: dict[str, list[wire.Event]] = {n: [] for n in self.nodes}
            while t < chunk_end:
                self._step(t, series, events)
                t += self.interval
            self._tick = t
            for node in self.nodes:
                if series[node] or events[node]:
                    yield self._batch(node, list(series[node].values()), events[node])

    def _batch(self, node: str, series: list[wire.Series], events: list[wire.Event]) -> wire.Batch:
        agent = f"sim-{self._run}-{node}"
        self._seq[agent] += 1
        return wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id=agent,
            facility=self.facility,
            node=node,
            seq=self._seq[agent],
            sent_at=time.time(),
            series=series,
            events=events,
        )

    def _step(
        self,
        t: float,
        series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], wire.Series]],
        events: dict[str, list[wire.Event]],
    ) -> None:
        rng = self._rng
        if self._rich is not None:  # events whose end has come
            for node, event in self._rich.due(t):
                events[node].append(event)
        # sessions that end at this tick
        for local, sess in list(self._active.items()):
            if sess.end <= t:
                del self._active[local]
                if self._rich is not None:
                    self._rich.session_ended(sess)
                events[sess.node].append(self._event(sess, ended=True))
                self.truth.add(local, "session_seconds", sess.end - sess.start)
                self.truth.add(local, "sessions", 1.0)
        # sessions that start at this tick
        for m in self.members:
            if m.local not in self._active and rng.random() < self._p_start:
                hours = rng.choice((0.5, 1, 2, 4, 8))
                sess = SimSession(
                    id=f"{self.facility}-{m.local}-{int(t)}",  # the same session, the same id
                    member=m,
                    node=rng.choice(self.nodes),
                    start=t,
                    end=t + hours * 3600,
                    cores=rng.choice((1, 2, 4, 8, 16)),
                    memory_gib=rng.choice((2, 4, 8, 16, 32)),
                )
                self._active[m.local] = sess
                events[sess.node].append(self._event(sess, ended=False))
                if self._rich is not None:
                    self._rich.session_started(sess, t)
            if self._rich is not None:
                self._rich.maybe_batch_job(m, t)
        # per node and user: counters and gauges sampled at this tick
        by_node: dict[str, dict[str, SimSession]] = defaultdict(dict)
        for sess in self._active.values():
            by_node[sess.node][sess.member.local] = sess
        for (node, local), st in self._state.items():
            if st.memory:  # the interval that ends now was spent at the last sampled value
                self.truth.add(local, "memory_byte_seconds", st.memory * self.interval)
                if local not in by_node[node]:
                    self._sample(series[node], node, local, "user_memory_rss_bytes", t, 0.0)
                    st.memory = 0.0
        for node in self.nodes:
            busy = 0.0
            for local, sess in by_node[node].items():
                st = self._state.setdefault((node, local), _NodeUser(created=t))
                # CPU used in (t - interval, t]: a quarter-multiple of the session's cores
                if t > sess.start:
                    used = sess.cores * self.interval * rng.choice((0.0, 0.25, 0.5, 0.75, 1.0))
                    read = float(rng.randrange(0, 50) * 1_000_000)
                    write = float(rng.randrange(0, 5) * 1_000_000)
                    st.cpu += used
                    st.read += read
                    st.write += write
                    busy += used
                    for r, a in (
                        ("cpu_seconds", used),
                        ("io_read_bytes", read),
                        ("io_write_bytes", write),
                    ):
                        self.truth.add(local, r, a)
                    self.truth.add(local, "cpu_hs23_seconds", used * self.hepscore)
                for metric, value in (
                    ("user_cpu_seconds", st.cpu),
                    ("user_io_read_bytes", st.read),
                    ("user_io_write_bytes", st.write),
                ):
                    self._sample(series[node], node, local, metric, t, value, st.created)
                st.memory = float(sess.memory_gib * GIB)
                self._sample(series[node], node, local, "user_memory_rss_bytes", t, st.memory)
            for metric, value in (
                ("node_cpu_cores", float(NODE_CORES)),
                ("node_memory_bytes", float(NODE_MEMORY)),
                ("node_hepscore23_per_core", self.hepscore),
                ("node_cpu_busy_ratio", min(1.0, busy / (NODE_CORES * self.interval))),
            ):
                self._sample(series[node], node, None, metric, t, value)
            if self._rich is not None:
                self._rich.node_tick(
                    t,
                    node,
                    by_node[node],
                    lambda n, *args, **kw: self._sample(series[n], n, *args, **kw),
                )

    def _sample(
        self,
        bucket: dict[tuple[str, tuple[tuple[str, str], ...]], wire.Series],
        node: str,
        local: str | None,
        metric: str,
        t: float,
        value: float,
        created: float | None = None,
        **extra_labels: str,
    ) -> None:
        labels = {"node": node} if local is None else {"node": node, "user": local}
        labels.update(extra_labels)
        key = (metric, tuple(sorted(labels.items())))
        s = bucket.get(key)
        if s is None:
            unit, kind = wire.KNOWN_METRICS[metric]
            s = bucket[key] = wire.Series(
                metric=metric,
                unit=unit,
                kind=kind,
                labels=labels,
                times=[],
                values=[],
                created=created,
            )
        s.times.append(t)
        s.values.append(value)

    def _event(self, sess: SimSession, ended: bool) -> wire.Event:
        return wire.Event(
            kind="session",
            id=sess.id,
            user=sess.member.local,
            start=sess.start,
            end=sess.end if ended else None,
            attrs={
                "profile": f"{sess.cores} cores, {sess.memory_gib} GiB",
                **({"kind": "terminal"} if self._rich and self._rich.is_terminal(sess) else {}),
            },
        )


class Poster:
    """Posts batches to an aggregator like an agent does (gzip, bearer token)."""

    def __init__(self, url: str, token: str, client: httpx.Client | None = None) -> None:
        self._url = url.rstrip("/") + "/api/v1/ingest"
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": wire.CONTENT_TYPE,
            "Content-Encoding": "gzip",
        }
        self._client = client or httpx.Client(timeout=30)

    def post(self, batch: wire.Batch, max_waits: int = 30) -> dict[str, object]:
        body = wire.encode(batch, compress=True)
        r = self._client.post(self._url, content=body, headers=self._headers)
        for _ in range(max_waits):  # rate-limited: wait as told, like the real agent does
            if r.status_code != 429:
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
            r = self._client.post(self._url, content=body, headers=self._headers)
        if r.status_code != 200:
            raise RuntimeError(
                f"aggregator refused batch {batch.seq} of {batch.node}: "
                f"HTTP {r.status_code} {r.text}"
            )
        return r.json()


def progress(label: str, done: float, total: float, stream=sys.stderr) -> None:
    """A one-line progress bar for terminals (plain lines when not a TTY)."""
    frac = 0.0 if total <= 0 else min(1.0, done / total)
    bar = "#" * int(frac * 30)
    end = "\r" if stream.isatty() and frac < 1 else "\n"
    if stream.isatty() or frac >= 1 or int(frac * 100) % 10 == 0:
        stream.write(f"{label} [{bar:<30}] {frac * 100:5.1f}%{end}")
        stream.flush()


def backfill(
    sim: FacilitySimulator,
    poster: Poster,
    start: float,
    end: float,
    report: Callable[[str, float, float], None] | None = progress,
) -> int:
    """Simulate [start, end) in chunks and post everything; returns batches posted."""
    n = 0
    last = -1
    for batch in sim.batches(start, end):
        poster.post(batch)
        n += 1
        done, span = sim.simulated_until - start, max(end - start, 1e-9)
        pct = int(done / span * 100)
        if report is not None and pct != last:
            report(f"simulating {sim.facility}", done, span)
            last = pct
    return n
