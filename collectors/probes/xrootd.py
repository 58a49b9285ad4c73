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

import atexit
import json
import logging
import math
import os
import selectors
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput, sample
from afmon.collectors.probes.data_formats import FormatClassifier
from afmon.collectors.probes.xrootd_packets import (
    MAP_CODES,
    DiscRec,
    MapPacket,
    OpenRec,
    PacketError,
    TimeRec,
    XferRec,
    parse_fstream,
    parse_header,
    parse_map,
    parse_summary,
)

log = logging.getLogger(__name__)

ROLES = ("local", "cache", "remote")
UNKNOWN_USER = "xrootd-unknown"  # bytes whose opener is unknown: accounted as unmapped
ASSERTED = "asserted:"  # user-label prefix of a name only the client asserted (no auth protocol)
TOKEN = "token:"  # user-label prefix of a token subject without a mapped local name
LOGIN_NAME_MAX = 8  # kXR_login carries at most 8 characters of the user name
VERIFIED, UNVERIFIED, UNKNOWN = "verified", "asserted", "unknown"  # the `identity` label
STATE_VERSION = 1
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
    local: str  # the wire `user` label: a local name, or ASSERTED/TOKEN-prefixed (never mapped)
    vo: str | None = None
    subject: str | None = None  # token subject, when the login used a token
    role: str | None = None
    identity: str = UNVERIFIED  # VERIFIED (auth protocol or token) or UNVERIFIED (asserted)
    auth: str = "none"  # the authentication protocol (`p=`), "token", or "none"
    app: str = ""  # the client program (`x=`), e.g. xrdcp
    since: float = 0.0  # when the login was seen (settling, see Monitor.reconcile)


def login_identity(login: str, cgi: dict[str, str], now: float) -> Identity:
    """The identity of a `u` login record. Verified only when an authentication protocol
    (`p=`) named the entity (`n=`); otherwise the name is whatever the client asserted in
    kXR_login (at most 8 characters): it becomes `asserted:NAME` (`asserted:NAME*` when it
    fills all 8 characters and may be cut), which no identity-map account matches by accident."""
    prot, name = cgi.get("p", ""), cgi.get("n", "")
    vo, role, app = cgi.get("o") or None, cgi.get("r") or None, cgi.get("x", "")
    if prot and name:
        return Identity(name, vo, None, role, VERIFIED, prot, app, now)
    cut = "*" if len(login) >= LOGIN_NAME_MAX else ""
    return Identity(f"{ASSERTED}{login}{cut}", vo, None, role, UNVERIFIED, "none", app, now)


def pgwrite_payload(written: int) -> int | None:
    """The payload of `written` bytes sent with kXR_pgwrite (a 4-byte CRC32c per 4 KiB page,
    pages aligned as xrdcp writes them), or None when no payload gives that count."""
    if written <= 0:
        return 0 if written == 0 else None
    pages = math.ceil(written / 4100)
    payload = written - 4 * pages
    return payload if 4096 * (pages - 1) < payload <= 4096 * pages else None


@dataclass
class OpenFile:
    user: str
    read: int = 0  # bytes already counted (read + readv)
    written: int = 0  # payload bytes already counted
    identity: str = UNKNOWN
    auth: str = "none"
    pgwrite: bool = False  # written by xrdcp: its byte counts carry pgwrite CRCs
    format: str = ""  # input data format of its path ("" when the monitor classifies none)


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
    f_until: int = 0  # end (server clock, s) of the last f-stream window applied

    @property
    def label(self) -> str:
        return f"{self.ip}:{self.port}" if self.port is not None else self.ip


@dataclass
class Totals:
    created: float
    source: str = "remote"
    values: dict[str, float] = field(default_factory=Counter)


# (user, source, identity, auth), and the format when the monitor classifies paths
UserKey = tuple[str, ...]


def user_key(f: OpenFile, source: str) -> UserKey:
    base = (f.user, source, f.identity, f.auth)
    return (*base, f.format) if f.format else base


class Monitor:
    def __init__(
        self,
        roles: dict[str, str] | None = None,
        *,
        default_role: str = "remote",
        max_servers: int = 64,
        max_files: int = 100_000,
        max_users: int = 100_000,
        login_grace: float = 3600.0,
        clock: Callable[[], float] = time.time,
        formats: FormatClassifier | None = None,
    ) -> None:
        for key, role in {**(roles or {}), "(default)": default_role}.items():
            if role not in ROLES:
                raise ValueError(f"server {key}: role {role!r} is not one of {', '.join(ROLES)}")
        self.roles = dict(roles or {})
        self.default_role = default_role
        self.max_servers, self.max_files, self.max_users = max_servers, max_files, max_users
        self.login_grace = login_grace
        self.formats = formats  # classifies opened files' paths (data_formats.py); None: off
        self.started = clock()
        self.changes = 0  # bumped by every applied packet: the probe saves state when it moved
        self.evicted: Counter[str] = Counter()
        self.streams: Lru[tuple[int, str, int], Stream] = Lru(max_servers, "stream", self.evicted)
        self.summaries: Lru[str, dict[str, int]] = Lru(max_servers, "summary", self.evicted)
        self.users: Lru[UserKey, Totals] = Lru(max_users, "user_totals", self.evicted)
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

    def _add_user(self, key: UserKey, now: float, **amounts: float) -> None:
        t = self.users.get(key)
        if t is None:
            t = Totals(now, key[1])
            self.users.put(key, t)
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

    def _new_stream(self, ip: str) -> Stream:
        return Stream(
            ip,
            Lru(self.max_users, "user", self.evicted),
            Lru(self.max_users, "userid", self.evicted),
            Lru(self.max_files, "path", self.evicted),
            Lru(self.max_files, "file", self.evicted),
        )

    # -- the detailed stream -------------------------------------------------------------

    def feed_detail(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Apply one detailed-stream packet; never raises (problems are counted)."""
        self.packets["detail"] += 1
        self.changes += 1
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
                st = self._new_stream(addr[0])
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
                self._map(st, body, now)
        except PacketError as exc:
            self.errors[exc.reason] += 1
        except Exception:  # noqa: BLE001  (a monitoring packet must never stop the listener)
            log.exception("unexpected failure on an XRootD monitoring packet")
            self.errors["internal"] += 1

    def _map(self, st: Stream, m: MapPacket, now: float) -> None:
        if m.code == "=":
            st.host = m.userid.host
            port = m.cgi.get("port", "")
            st.port = int(port) if port.isdigit() else st.port
        elif m.code == "u":
            st.users.put(m.dictid, login_identity(m.userid.user, m.cgi, now))
            st.by_userid.put(m.raw_userid, m.dictid)
        elif m.code == "T":
            uc = m.cgi.get("Uc", "")
            ident = st.users.get(int(uc)) if uc.isdigit() else None
            if ident is None:
                self.errors["token_without_login"] += 1
                return
            subject, name = m.cgi.get("s") or ident.subject, m.cgi.get("n", "")
            ident.subject = subject
            ident.vo = m.cgi.get("o") or ident.vo
            if name or subject:  # the token (validated by the server) names the user
                ident.local = name or f"{TOKEN}{subject}"
                ident.identity, ident.auth = VERIFIED, "token"
        elif m.code == "d":
            st.paths.put(m.dictid, m.raw_userid)

    def _opener(self, st: Stream, rec: OpenRec) -> Identity | None:
        dictid = rec.user_dictid
        if dictid is None:  # no LFN in the record: the file id is a `d` path dictid
            raw = st.paths.get(rec.file_id)
            dictid = st.by_userid.get(raw) if raw is not None else None
        ident = st.users.get(dictid) if dictid is not None else None
        if ident is None:
            self.errors["unknown_user"] += 1
        return ident

    def _fstream(self, st: Stream, records: list[object], now: float) -> None:
        source = self.role_for(st.ip, st.host, st.port)
        for rec in records:
            if isinstance(rec, OpenRec):
                ident = self._opener(st, rec)
                if ident is None:
                    f = OpenFile(UNKNOWN_USER)
                else:
                    f = OpenFile(ident.local, 0, 0, ident.identity, ident.auth)
                    f.pgwrite = rec.write and ident.app == "xrdcp"
                if self.formats is not None:  # the path is classified here, never sent
                    f.format = self.formats(rec.lfn)
                st.files.put(rec.file_id, f)
                self._add_user(user_key(f, source), now, opened=1)
                self._add_server(st.label, source, now, opened=1)
            elif isinstance(rec, XferRec):
                f = st.files.get(rec.file_id)
                if f is None:
                    self.errors["close_without_open" if rec.final else "xfr_without_open"] += 1
                    f = OpenFile(UNKNOWN_USER)
                    if not rec.final:
                        st.files.put(rec.file_id, f)
                read = rec.read + rec.readv
                written = rec.write
                if f.pgwrite:  # xrdcp uploads with kXR_pgwrite: count the payload, not CRCs
                    payload = pgwrite_payload(written)
                    if payload is None:
                        self.errors["pgwrite_mismatch"] += 1
                    else:
                        written = payload
                d_read, d_write = max(0, read - f.read), max(0, written - f.written)
                f.read, f.written = max(f.read, read), max(f.written, written)
                if rec.final:
                    st.files.pop(rec.file_id, None)
                if d_read or d_write:
                    key = user_key(f, source)
                    self._add_user(key, now, read=d_read, written=d_write)
                    self._add_server(st.label, source, now, read=d_read, written=d_write)
            elif isinstance(rec, DiscRec):
                st.users.pop(rec.user_dictid, None)
            elif isinstance(rec, TimeRec):
                st.f_until = max(st.f_until, rec.t_end)

    # -- the summary stream --------------------------------------------------------------

    def feed_summary(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Apply one summary packet; never raises (problems are counted)."""
        self.packets["summary"] += 1
        self.changes += 1
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

    # -- reconciliation with the server's own totals -------------------------------------

    def settled(self, label: str, now: float) -> bool:
        """Whether every byte in the server's last summary is already attributed or never
        will be: its current life has no open file and no logged-in user (a login's records
        all precede its disconnect record), and the summary is newer than the last f-stream
        window applied (so the records applied were all sent before it). Logins older than
        `login_grace` that hold no file do not block (a lost disconnect record)."""
        prev = self.summaries.get(label)
        if prev is None:
            return False
        lives = [(key[0], st) for key, st in self.streams.items() if st.label == label]
        if not lives:
            return True  # no detailed stream from it: nothing of it is attributed
        st = max(lives, key=lambda life: life[0])[1]  # the current life: the latest stod
        if st.files:
            return False
        if any(now - i.since < self.login_grace for i in st.users.values()):
            return False
        return prev["tod"] > st.f_until

    def reconcile(self, now: float) -> None:
        """Per server and direction, the bytes its summary counted on its links (`link out`,
        `link in`) that no user's f-stream records account for: protocol overhead, pgwrite
        CRCs, and transfers whose records say less than the server sent (a client killed
        mid-transfer closes with read=0). Taken only when settled, so never a byte that a
        record still to come will attribute; a counter (never decreasing): a negative
        difference (bytes attributed that this summary never saw, e.g. files opened before
        the agent first heard the server) lowers the floor instead."""
        for label, t in self.servers.items():
            if not self.settled(label, now):
                continue
            v = t.values
            for direction, link, attributed in (
                ("out", "link_out", "read"),
                ("in", "link_in", "written"),
            ):
                diff = v[link] - v[attributed]
                floor = min(v[f"floor_{direction}"], diff)
                v[f"floor_{direction}"] = floor
                v[f"unattributed_{direction}"] = max(v[f"unattributed_{direction}"], diff - floor)

    # -- output --------------------------------------------------------------------------

    def series(self, node: str, now: float) -> list[wire.Series]:
        self.reconcile(now)
        out: list[wire.Series] = []
        for (user, source, identity, auth, *fmt), t in self.users.items():
            labels = {
                "user": user,
                "source": source,
                "identity": identity,
                "auth": auth,
                "node": node,
            }
            if fmt:
                labels["format"] = fmt[0]
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
            if label in self.summaries:
                for direction in ("out", "in"):
                    out.append(
                        sample(
                            UNATTRIBUTED,
                            {**labels, "direction": direction},
                            now,
                            t.values[f"unattributed_{direction}"],
                            unit="bytes",
                            kind="counter",
                            created=t.created,
                        )
                    )
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

    # -- durable state -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to carry on after an agent restart, as JSON-ready data: the
        dictid maps, each open file's bytes already counted, the counters and their `created`
        times, the summaries' last values and sequence trackers."""

        def seqs(st: Stream) -> dict[str, Any]:
            return {k: [t.last, list(t.recent), sorted(t.missing)] for k, t in st.seqs.items()}

        return {
            "version": STATE_VERSION,
            "started": self.started,
            "packets": dict(self.packets),
            "errors": dict(self.errors),
            "seq": dict(self.seq),
            "evicted": dict(self.evicted),
            "streams": [
                {
                    "key": list(key),
                    "ip": st.ip,
                    "host": st.host,
                    "port": st.port,
                    "last_seen": st.last_seen,
                    "f_until": st.f_until,
                    "users": [[k, asdict(v)] for k, v in st.users.items()],
                    "by_userid": list(st.by_userid.items()),
                    "paths": list(st.paths.items()),
                    "files": [[k, asdict(v)] for k, v in st.files.items()],
                    "seqs": seqs(st),
                }
                for key, st in self.streams.items()
            ],
            "summaries": list(self.summaries.items()),
            "users": [[list(k), t.created, dict(t.values)] for k, t in self.users.items()],
            "servers": [[k, t.created, t.source, dict(t.values)] for k, t in self.servers.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take up a snapshot (see `snapshot`); raises ValueError for one it cannot use."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version {state.get('version')!r}, not {STATE_VERSION}")
        try:
            self.started = float(state["started"])
            for name in ("packets", "errors", "seq", "evicted"):
                getattr(self, name).clear()
                getattr(self, name).update(state[name])
            self.streams.clear()
            for d in state["streams"]:
                st = self._new_stream(d["ip"])
                st.host, st.port = d["host"], d["port"]
                st.last_seen, st.f_until = d["last_seen"], d["f_until"]
                for k, v in d["users"]:
                    st.users.put(int(k), Identity(**v))
                for raw, k in d["by_userid"]:
                    st.by_userid.put(raw, int(k))
                for k, raw in d["paths"]:
                    st.paths.put(int(k), raw)
                for k, v in d["files"]:
                    st.files.put(int(k), OpenFile(**v))
                for name, (last, recent, missing) in d["seqs"].items():
                    tr = st.seqs[name] = SeqTracker()
                    tr.last, tr.missing = last, set(missing)
                    tr.recent.extend(recent)
                stod, ip, port = d["key"]
                self.streams.put((int(stod), str(ip), int(port)), st)
            self.summaries.clear()
            for label, prev in state["summaries"]:
                self.summaries.put(label, dict(prev))
            self.users.clear()
            for key, created, values in state["users"]:
                self.users.put(tuple(key), Totals(created, key[1], Counter(values)))
            self.servers.clear()
            for label, created, source, values in state["servers"]:
                self.servers.put(label, Totals(created, source, Counter(values)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"unusable state: {exc!r}") from None


UNATTRIBUTED = "xrootd_unattributed_bytes"  # server, source, direction (out, in)
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
    """Listens for XRootD monitoring on two UDP ports; `collect` reports the totals so far.

    With `state_path`, the monitor's state (see `Monitor.snapshot`) is taken up from that file
    at construction, written after every `collect` that follows new packets (the values a
    batch carries are then always on disk), and checkpointed by `close()` (and at interpreter
    exit) after the packets already queued on the sockets are applied: a restarted agent
    neither counts a byte twice (the files' counted bytes survive) nor loses one (the records
    are cumulative, so the first after the restart brings what was missed)."""

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
        state_path: str | os.PathLike[str] | None = None,
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
        self._state_path = Path(state_path) if state_path is not None else None
        self._saved_changes = -1
        self._closed = False
        if self._state_path is not None:
            self._load(self._state_path)
            self._saved_changes = monitor.changes

    # -- durable state -------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        try:
            self.monitor.restore(json.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            log.warning("xrootd probe state %s unusable, starting afresh: %s", path, exc)
            self.monitor.errors["state_unusable"] += 1
            return
        log.info("xrootd probe state taken up from %s", path)

    def checkpoint(self) -> None:
        """Write the monitor's state now (when it changed since the last write)."""
        if self._state_path is None:
            return
        with self._lock:
            if self.monitor.changes == self._saved_changes:
                return
            body = json.dumps(self.monitor.snapshot(), separators=(",", ":")).encode()
            changes = self.monitor.changes
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        try:
            tmp.write_bytes(body)
            os.replace(tmp, self._state_path)
        except OSError as exc:
            log.warning("cannot save xrootd probe state to %s: %s", self._state_path, exc)
            return
        self._saved_changes = changes

    # -- listening -----------------------------------------------------------------------

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
        if self._state_path is not None:
            atexit.register(self.close)  # the checkpoint at shutdown, whoever stops the agent

    def _handlers(self) -> list[tuple[socket.socket, Callable[..., None]]]:
        assert self._sockets is not None
        summary, detail = self._sockets
        return [(summary, self.monitor.feed_summary), (detail, self.monitor.feed_detail)]

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for sock, feed in self._handlers():
                sel.register(sock, selectors.EVENT_READ, feed)
            while not self._stop.is_set():
                for key, _mask in sel.select(timeout=0.2):
                    try:
                        data, addr = key.fileobj.recvfrom(65536)  # type: ignore[union-attr]
                    except OSError:
                        continue
                    with self._lock:
                        key.data(data, addr[:2], self._clock())

    def _drain(self) -> None:
        """Apply what is already queued on the sockets (at shutdown, before the checkpoint)."""
        for sock, feed in self._handlers():
            sock.setblocking(False)
            for _ in range(100_000):
                try:
                    data, addr = sock.recvfrom(65536)
                except OSError:
                    break
                with self._lock:
                    feed(data, addr[:2], self._clock())

    def collect(self, now: float) -> ProbeOutput:
        if self._thread is None:
            try:
                self.start()
            except OSError as exc:
                log.error("xrootd probe cannot listen on %s: %s", self.listen, exc)
                return ProbeOutput()
        with self._lock:
            series = self.monitor.series(self.node, now)
        self.checkpoint()  # what this batch carries is on disk before it leaves
        return ProbeOutput(series=series)

    def close(self) -> None:
        """Stop listening, apply the packets already received, and checkpoint the state."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._drain()
        if self._state_path is not None:
            with self._lock:
                self.monitor.reconcile(self._clock())
            self.checkpoint()
        for s in self._sockets or ():
            s.close()
