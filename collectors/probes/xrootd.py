"""XRootD data access: bytes read and written per user and per data source, from the servers'
own UDP monitoring streams (docs/data.md).

`Monitor` is the state machine (no sockets): it joins the detailed stream's file records to the
user who opened the file (f-stream open -> user dictid -> `u` login / `T` token -> local user
name) and classifies bytes by the role of the server that moved them (local storage, cache,
remote). It keeps the summary stream's server totals, taking differences of counters that are
cumulative since the server started (`tos`) and starting over when `tos` changes.

Streams are keyed by (stod, address, UDP port), so a restarted server never mixes dictids with
its previous life. Every packet is checked against its stream's sequence number: lost,
duplicated (dropped: a repeated close would count twice) and reordered packets are counted.
Maps are LRU-capped, so opens that never close cannot grow memory; evictions are counted.

`XRootDProbe` owns the UDP sockets and a listener thread; the sockets are opened on `start()`
(or the first `collect`), never at construction, and may be handed in by a test.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput, sample
from afmon.collectors.probes.xrootd_packets import (
    MAP_CODES,
    DiscRec,
    MapPacket,
    OpenRec,
    PacketError,
    XferRec,
    parse_fstream,
    parse_header,
    parse_map,
    parse_summary,
)

log = logging.getLogger(__name__)

ROLES = ("local", "cache", "remote")
UNKNOWN_USER = "xrootd-unknown"  # bytes whose opener is unknown: accounted as unmapped
OTHER_CODES = frozenset("trg")  # trace, redirect and g-stream packets: sequence-checked only
K = TypeVar("K")
V = TypeVar("V")


class Lru(OrderedDict[K, V], Generic[K, V]):
    """A dict that keeps at most `cap` entries, dropping the least recently set ones and
    counting them in `evicted[what]`."""

    def __init__(self, cap: int, what: str, evicted: Counter[str]) -> None:
        super().__init__()
        self.cap, self.what, self.evicted = cap, what, evicted

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)
            self.evicted[self.what] += 1


class SeqTracker:
    """One stream's 8-bit sequence numbers: 'ok', 'late' (reordered) or 'duplicate'."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.recent: deque[int] = deque(maxlen=64)
        self.missing: set[int] = set()

    def check(self, pseq: int) -> tuple[str, int]:
        """(verdict, packets newly found lost)."""
        if self.last is None:
            self.last = pseq
            self.recent.append(pseq)
            return "ok", 0
        if pseq in self.recent:
            return "duplicate", 0
        self.recent.append(pseq)
        ahead = (pseq - self.last) % 256
        if ahead < 128:
            lost = ahead - 1
            self.missing.update((self.last + i) % 256 for i in range(1, ahead))
            self.last = pseq
            self.missing = {m for m in self.missing if (pseq - m) % 256 < 128}
            return "ok", lost
        if pseq in self.missing:
            self.missing.discard(pseq)
            return "late", -1  # it was counted lost: it was only late
        return "late", 0


@dataclass
class Identity:
    local: str  # the local user name: the wire `user` label
    vo: str | None = None
    subject: str | None = None  # token subject, when the login used a token
    role: str | None = None


@dataclass
class OpenFile:
    user: str
    read: int = 0  # bytes already counted (read + readv)
    written: int = 0


@dataclass
class Stream:
    """One server life: (stod, address, UDP port)."""

    ip: str
    users: Lru[int, Identity]
    by_userid: Lru[str, int]
    paths: Lru[int, str]
    files: Lru[int, OpenFile]
    host: str = ""
    port: int | None = None
    seqs: dict[str, SeqTracker] = field(default_factory=dict)
    last_seen: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.ip}:{self.port}" if self.port is not None else self.ip


@dataclass
class Totals:
    created: float
    source: str = "remote"
    values: dict[str, float] = field(default_factory=Counter)


class Monitor:
    def __init__(
        self,
        roles: dict[str, str] | None = None,
        *,
        default_role: str = "remote",
        max_servers: int = 64,
        max_files: int = 100_000,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for key, role in {**(roles or {}), "(default)": default_role}.items():
            if role not in ROLES:
                raise ValueError(f"server {key}: role {role!r} is not one of {', '.join(ROLES)}")
        self.roles = dict(roles or {})
        self.default_role = default_role
        self.max_files, self.max_users = max_files, max_users
        self.started = clock()
        self.evicted: Counter[str] = Counter()
        self.streams: Lru[tuple[int, str, int], Stream] = Lru(max_servers, "stream", self.evicted)
        self.summaries: Lru[str, dict[str, int]] = Lru(max_servers, "summary", self.evicted)
        self.users: Lru[tuple[str, str], Totals] = Lru(max_users, "user_totals", self.evicted)
        self.servers: Lru[str, Totals] = Lru(max_servers, "server_totals", self.evicted)
        self.packets: Counter[str] = Counter({"detail": 0, "summary": 0})  # sent even at 0
        self.errors: Counter[str] = Counter()
        self.seq: Counter[str] = Counter()  # lost, duplicate, reordered

    # -- classification ------------------------------------------------------------------

    def role_for(self, ip: str, host: str, port: int | None) -> str:
        for key in (f"{ip}:{port}", f"{host}:{port}", ip, host):
            if key in self.roles:
                return self.roles[key]
        return self.default_role

    def _add_user(self, user: str, source: str, now: float, **amounts: float) -> None:
        t = self.users.get((user, source))
        if t is None:
            t = Totals(now, source)
            self.users.put((user, source), t)
        for k, v in amounts.items():
            t.values[k] += v

    def _add_server(self, label: str, source: str, now: float, **amounts: float) -> None:
        t = self.servers.get(label)
        if t is None:
            t = Totals(now, source)
            self.servers.put(label, t)
        t.source = source
        for k, v in amounts.items():
            t.values[k] += v

    # -- the detailed stream -------------------------------------------------------------

    def feed_detail(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Apply one detailed-stream packet; never raises (problems are counted)."""
        self.packets["detail"] += 1
        try:
            h = parse_header(data)
            if h.code == "f":
                body: object = parse_fstream(data)
            elif h.code in MAP_CODES:
                body = parse_map(data, h)
            elif h.code in OTHER_CODES:
                body = None
            else:
                raise PacketError("unknown_code", repr(h.code))
            key = (h.stod, addr[0], addr[1])
            st = self.streams.get(key)
            if st is None:
                st = Stream(
                    addr[0],
                    Lru(self.max_users, "user", self.evicted),
                    Lru(self.max_users, "userid", self.evicted),
                    Lru(self.max_files, "path", self.evicted),
                    Lru(self.max_files, "file", self.evicted),
                )
                self.streams.put(key, st)
            st.last_seen = now
            name = h.code if h.code in "frg" else "map"
            verdict, lost = st.seqs.setdefault(name, SeqTracker()).check(h.pseq)
            self.seq["lost"] += lost
            if verdict == "duplicate":
                self.seq["duplicate"] += 1
                return
            if verdict == "late":
                self.seq["reordered"] += 1
            if isinstance(body, list):
                self._fstream(st, body, now)
            elif isinstance(body, MapPacket):
                self._map(st, body)
        except PacketError as exc:
            self.errors[exc.reason] += 1
        except Exception:  # noqa: BLE001  (a monitoring packet must never stop the listener)
            log.exception("unexpected failure on an XRootD monitoring packet")
            self.errors["internal"] += 1

    def _map(self, st: Stream, m: MapPacket) -> None:
        if m.code == "=":
            st.host = m.userid.host
            port = m.cgi.get("port", "")
            st.port = int(port) if port.isdigit() else st.port
        elif m.code == "u":
            st.users.put(
                m.dictid,
                Identity(
                    m.cgi.get("n") or m.userid.user,
                    m.cgi.get("o") or None,
                    None,
                    m.cgi.get("r") or None,
                ),
            )
            st.by_userid.put(m.raw_userid, m.dictid)
        elif m.code == "T":
            uc = m.cgi.get("Uc", "")
            ident = st.users.get(int(uc)) if uc.isdigit() else None
            if ident is None:
                self.errors["token_without_login"] += 1
                return
            ident.subject = m.cgi.get("s") or ident.subject
            ident.vo = m.cgi.get("o") or ident.vo
            ident.local = m.cgi.get("n") or ident.local
        elif m.code == "d":
            st.paths.put(m.dictid, m.raw_userid)

    def _opener(self, st: Stream, rec: OpenRec) -> str:
        dictid = rec.user_dictid
        if dictid is None:  # no LFN in the record: the file id is a `d` path dictid
            raw = st.paths.get(rec.file_id)
            dictid = st.by_userid.get(raw) if raw is not None else None
        ident = st.users.get(dictid) if dictid is not None else None
        if ident is None:
            self.errors["unknown_user"] += 1
            return UNKNOWN_USER
        return ident.local

    def _fstream(self, st: Stream, records: list[object], now: float) -> None:
        source = self.role_for(st.ip, st.host, st.port)
        for rec in records:
            if isinstance(rec, OpenRec):
                user = self._opener(st, rec)
                st.files.put(rec.file_id, OpenFile(user))
                self._add_user(user, source, now, opened=1)
                self._add_server(st.label, source, now, opened=1)
            elif isinstance(rec, XferRec):
                f = st.files.get(rec.file_id)
                if f is None:
                    self.errors["close_without_open" if rec.final else "xfr_without_open"] += 1
                    f = OpenFile(UNKNOWN_USER)
                    if not rec.final:
                        st.files.put(rec.file_id, f)
                read = rec.read + rec.readv
                d_read, d_write = max(0, read - f.read), max(0, rec.write - f.written)
                f.read, f.written = max(f.read, read), max(f.written, rec.write)
                if rec.final:
                    st.files.pop(rec.file_id, None)
                if d_read or d_write:
                    self._add_user(f.user, source, now, read=d_read, written=d_write)
                    self._add_server(st.label, source, now, read=d_read, written=d_write)
            elif isinstance(rec, DiscRec):
                st.users.pop(rec.user_dictid, None)

    # -- the summary stream --------------------------------------------------------------

    def feed_summary(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Apply one summary packet; never raises (problems are counted)."""
        self.packets["summary"] += 1
        try:
            s = parse_summary(data)
        except PacketError as exc:
            self.errors[exc.reason] += 1
            return
        label = f"{addr[0]}:{s.port}" if s.port is not None else addr[0]
        source = self.role_for(addr[0], s.host, s.port)
        values = {
            "link_in": s.link_in,
            "link_out": s.link_out,
            "opens": s.opens,
        }
        pid = int(s.pid) if s.pid.isdigit() else 0
        prev = self.summaries.get(label)
        counts = True
        if prev is None:
            counts = s.tos >= int(self.started)  # started while we listened: all of it is new
            prev = {"tos": s.tos, "pid": pid, "tod": s.tod}
        elif (s.tos, pid) != (prev["tos"], prev["pid"]):  # a new server life
            if s.tos < prev["tos"]:
                self.seq["reordered"] += 1  # a packet from before the restart
                return
            self._add_server(label, source, now, restarts=1)
            prev = {"tos": s.tos, "pid": pid, "tod": s.tod}
        elif s.tod < prev["tod"]:
            self.seq["reordered"] += 1
            return
        amounts: dict[str, float] = {}
        for k, v in values.items():
            if v is None:
                continue
            if counts:
                amounts[k] = max(0, v - prev.get(k, 0))
            prev[k] = max(v, prev.get(k, 0))
        prev["tod"] = max(prev["tod"], s.tod)
        self.summaries.put(label, prev)
        self._add_server(label, source, now, **amounts)

    # -- output --------------------------------------------------------------------------

    def series(self, node: str, now: float) -> list[wire.Series]:
        out: list[wire.Series] = []
        for (user, source), t in self.users.items():
            labels = {"user": user, "source": source, "node": node}
            for metric, key in (
                ("user_data_read_bytes", "read"),
                ("user_data_written_bytes", "written"),
                ("user_files_opened", "opened"),
            ):
                out.append(sample(metric, labels, now, t.values[key], created=t.created))
        for label, t in self.servers.items():
            labels = {"server": label, "source": t.source, "node": node}
            for metric, key in SERVER_METRICS:
                out.append(sample(metric, labels, now, t.values[key], created=t.created))
        health: list[tuple[str, dict[str, str], float]] = [
            ("xrootd_monitor_packets", {"stream": k}, v) for k, v in self.packets.items()
        ]
        health += [("xrootd_monitor_errors", {"reason": k}, v) for k, v in self.errors.items()]
        health += [("xrootd_monitor_sequence", {"kind": k}, v) for k, v in self.seq.items()]
        health += [("xrootd_monitor_evictions", {"what": k}, v) for k, v in self.evicted.items()]
        for metric, labels, value in health:
            # lost packets found late again can make "lost" dip below zero for a moment
            out.append(
                sample(
                    metric,
                    {**labels, "node": node},
                    now,
                    max(0.0, value),
                    unit="1",
                    kind="counter",
                    created=self.started,
                )
            )
        return out


SERVER_METRICS = (
    ("xrootd_server_read_bytes", "read"),
    ("xrootd_server_written_bytes", "written"),
    ("xrootd_server_files_opened", "opened"),
    ("xrootd_server_link_in_bytes", "link_in"),
    ("xrootd_server_link_out_bytes", "link_out"),
    ("xrootd_server_opens", "opens"),
    ("xrootd_server_restarts", "restarts"),
)


class XRootDProbe:
    """Listens for XRootD monitoring on two UDP ports; `collect` reports the totals so far."""

    name = "xrootd"

    def __init__(
        self,
        node: str,
        monitor: Monitor,
        *,
        listen_host: str = "127.0.0.1",
        summary_port: int = 9931,
        detail_port: int = 9930,
        sockets: tuple[socket.socket, socket.socket] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.monitor = monitor
        self.listen = (listen_host, summary_port, detail_port)
        self.state = READY
        self._sockets = sockets
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open (unless handed in) and bind the sockets, and start the listener thread."""
        if self._thread is not None:
            return
        if self._sockets is None:
            host, summary_port, detail_port = self.listen
            opened: list[socket.socket] = []
            try:
                for port in (summary_port, detail_port):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    opened.append(s)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    s.bind((host, port))
            except OSError:
                for s in opened:
                    s.close()
                raise
            self._sockets = (opened[0], opened[1])
        self._thread = threading.Thread(target=self._run, name="xrootd-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sockets is not None
        summary, detail = self._sockets
        with selectors.DefaultSelector() as sel:
            sel.register(summary, selectors.EVENT_READ, self.monitor.feed_summary)
            sel.register(detail, selectors.EVENT_READ, self.monitor.feed_detail)
            while not self._stop.is_set():
                for key, _mask in sel.select(timeout=0.2):
                    try:
                        data, addr = key.fileobj.recvfrom(65536)  # type: ignore[union-attr]
                    except OSError:
                        continue
                    with self._lock:
                        key.data(data, addr[:2], self._clock())

    def collect(self, now: float) -> ProbeOutput:
        if self._thread is None:
            try:
                self.start()
            except OSError as exc:
                log.error("xrootd probe cannot listen on %s: %s", self.listen, exc)
                return ProbeOutput()
        with self._lock:
            return ProbeOutput(series=self.monitor.series(self.node, now))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in self._sockets or ():
            s.close()
