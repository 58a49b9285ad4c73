"""Per-user CPU, memory and IO on this node, and the node's capacity.

Two sources, chosen per user:

* cgroup v2: a user's `user.slice/user-UID.slice` when the unified hierarchy has its
  cpu.stat, io.stat and memory files. The kernel keeps these counters across process exits.
* /proc (procfs.py: stat, status and io of each process) for every process not inside such a
  slice. Per-process counters vanish when a process exits, so each source's last values are
  remembered (keyed by pid and create time, which also tells a reused pid from the old one)
  and, once it is gone, folded into the user's "exited" total. A user's counters therefore
  never go down.

The state behind that (per-source last values, per-user exited totals) can be persisted in a
file, so that a restarted agent carries on from where it stopped instead of resetting counters.
A user's counter carries `created` (the previous scan's time) when the user first appears after
the agent's first scan: all of it accrued since then, so the aggregator may count it in full.

System accounts (uid below `min_uid`, and the names in `exclude_users`) are nobody's usage and
are left out of both sources: their slices are not read, and their processes are skipped on
the /proc path, counted in `agent_excluded_processes` so that what is left out stays visible.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput, sample
from afmon.collectors.probes.procfs import CLOCK_TICKS, ProcFS

log = logging.getLogger(__name__)

_COUNTERS = ("user_cpu_seconds", "user_io_read_bytes", "user_io_write_bytes")
_SLICE_RE = re.compile(r"^user-(\d+)\.slice$")


class _UserState(msgspec.Struct):
    exited: list[float]  # counters of sources that are gone
    reported: list[float]  # last totals reported: the floor that keeps them monotonic
    created: float | None = None
    parked: bool = False  # no live source, and the final totals have been reported


class _State(msgspec.Struct):
    last_scan: float | None = None
    cpu: list[float] | None = None  # node [busy, total] CPU seconds at the last scan
    sources: dict[str, tuple[str, list[float]]] = {}  # key -> (user, counters)
    users: dict[str, _UserState] = {}


class _Reading(msgspec.Struct):
    user: str
    counters: list[float]  # cpu seconds, read bytes, write bytes
    rss: float
    procs: int


def _pwd_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _unified_root(root: Path) -> Path | None:
    """The cgroup v2 mount: the root itself (pure v2) or its `unified/` (hybrid)."""
    for candidate in (root, root / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    return None


def _kv_file(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _io_bytes(path: Path) -> tuple[int, int]:
    """Sum rbytes and wbytes over the devices of an io.stat file."""
    rbytes = wbytes = 0
    for line in path.read_text().splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                rbytes += int(value)
            elif key == "wbytes":
                wbytes += int(value)
    return rbytes, wbytes


def _count_procs(directory: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            text = (Path(dirpath) / "cgroup.procs").read_text()
            total += sum(1 for line in text.splitlines() if line.strip())
    return total


def _in_slices(cgroup: str | None, slices: set[str]) -> bool:
    if cgroup is None or not cgroup.startswith("/user.slice/"):
        return False
    return "/".join(cgroup.split("/")[:3]) in slices


class HostProbe:
    """Per-user `user_*` series and node capacity `node_*` series for one node."""

    name = "host"

    def __init__(
        self,
        *,
        node: str | None = None,
        hepscore23_per_core: float = 10.0,
        proc_root: str | os.PathLike[str] = "/proc",
        cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
        psutil_module: Any = None,
        user_name: Callable[[int], str] = _pwd_name,
        state_path: str | os.PathLike[str] | None = None,
        min_uid: int = 1000,
        exclude_users: Iterable[str] = (),
    ) -> None:
        if psutil_module is None:
            import psutil as psutil_module
        self.node = node or socket.gethostname()
        self.hepscore23_per_core = hepscore23_per_core
        self.proc_root = Path(proc_root)
        self.cgroup_root = Path(cgroup_root)
        self._ps = psutil_module
        if str(self.proc_root) != "/proc" and hasattr(self._ps, "PROCFS_PATH"):
            self._ps.PROCFS_PATH = str(self.proc_root)
        self._user_name = user_name
        self._names: dict[int, str] = {}
        self.min_uid = min_uid
        self.exclude_users = frozenset(exclude_users)
        self._excluded = 0  # processes of system accounts left out by the last scan
        self._procfs = ProcFS(self.proc_root)
        self._keys: dict[tuple[int, int], str] = {}  # (pid, start ticks) -> source key
        self._live_keys: dict[tuple[int, int], str] = {}
        self._boot: float | None = None
        self.state_path = Path(state_path) if state_path is not None else None
        self._state = self._load_state()
        self.state = READY

    # -- reading the sources -------------------------------------------------------------

    def _name(self, uid: int) -> str:
        name = self._names.get(uid)
        if name is None:
            name = self._names[uid] = self._user_name(uid)
        return name

    def _is_excluded(self, uid: int) -> bool:
        """A system account's uid (below `min_uid`) or an account named in `exclude_users`."""
        return uid < self.min_uid or (
            bool(self.exclude_users) and self._name(uid) in self.exclude_users
        )

    def _read_slices(self) -> dict[int, tuple[str, _Reading]]:
        """uid -> (source key, reading) for each per-user slice that has all we need."""
        unified = _unified_root(self.cgroup_root)
        if unified is None or not (unified / "user.slice").is_dir():
            return {}
        out: dict[int, tuple[str, _Reading]] = {}
        for entry in sorted((unified / "user.slice").iterdir()):
            match = _SLICE_RE.match(entry.name)
            if not match or not entry.is_dir():
                continue
            uid = int(match.group(1))
            if self._is_excluded(uid):
                continue  # its processes go by the /proc path, which leaves them out
            try:
                out[uid] = (f"cg:{uid}:{entry.stat().st_ino}", self._read_slice(entry, uid))
            except (FileNotFoundError, ValueError) as exc:
                log.debug("cgroup slice %s not usable, using /proc: %s", entry, exc)
        return out

    def _read_slice(self, path: Path, uid: int) -> _Reading:
        cpu_seconds = _kv_file(path / "cpu.stat")["usage_usec"] / 1e6
        rbytes, wbytes = _io_bytes(path / "io.stat")
        if (path / "memory.stat").is_file():
            mem = _kv_file(path / "memory.stat")
            rss = float(mem["anon"] + mem.get("file_mapped", 0))
        else:
            rss = float(int((path / "memory.current").read_text()))
        return _Reading(self._name(uid), [cpu_seconds, rbytes, wbytes], rss, _count_procs(path))

    def _cgroup_of(self, pid: int) -> str | None:
        text = self._procfs.cgroup(pid)
        if text is None:
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                path = line[3:]
                # an agent in its own cgroup namespace (a Kubernetes pod) sees a host
                # process's cgroup relative to its own: /../../user.slice/...; the host's
                # hierarchy is mounted at cgroup_root, so the path from its root is wanted
                while path.startswith("/.."):
                    path = path[3:] or "/"
                return path
        return None

    def _source_key(self, pid: int, start_ticks: int) -> str:
        """`p:PID:CREATE_TIME`, the create time fixed when the process is first seen (as
        psutil's was): a later step of the clock moves btime, not a live process's key."""
        key = self._keys.get((pid, start_ticks))
        if key is None:
            if self._boot is None:
                self._boot = self._procfs.boot_time()
            key = f"p:{pid}:{start_ticks / CLOCK_TICKS + self._boot:.2f}"
        self._live_keys[pid, start_ticks] = key
        return key

    def _read_procs(self, covered: set[int]) -> dict[str, _Reading]:
        slices = {f"/user.slice/user-{uid}.slice" for uid in covered}
        out: dict[str, _Reading] = {}
        fs = self._procfs
        excluded = 0
        self._boot = None  # read again if a new process needs it
        self._live_keys = {}
        for pid in fs.pids():
            stat = fs.stat(pid)
            if stat is None or pid == 2 or stat.ppid == 2:
                continue  # gone; or a kernel thread, which is no user's usage
            if slices and _in_slices(self._cgroup_of(pid), slices):
                continue  # counted through its user's slice (whoever runs it there)
            status = fs.status(pid)
            if status is None:
                continue
            uid, rss = status
            if self._is_excluded(uid):
                excluded += 1
                continue
            io = fs.io(pid, stat.zombie)
            if io is None:
                continue
            out[self._source_key(pid, stat.start_ticks)] = _Reading(
                self._name(uid), [stat.cpu_seconds, io[0], io[1]], rss, 1
            )
        self._keys, self._excluded = self._live_keys, excluded
        return out

    # -- accounting ----------------------------------------------------------------------

    def collect(self, now: float) -> ProbeOutput:
        slices = self._read_slices()
        readings = self._read_procs(set(slices))
        readings.update(dict(slices.values()))
        out = ProbeOutput(series=self._account(readings, now) + self._node_series(now))
        self._state.last_scan = now
        self._save_state()
        return out

    def _account(self, readings: dict[str, _Reading], now: float) -> list[wire.Series]:
        state = self._state
        for key, (user, last) in state.sources.items():
            if key not in readings:
                st = state.users.setdefault(user, _UserState([0.0] * 3, [0.0] * 3))
                st.exited = [a + b for a, b in zip(st.exited, last, strict=True)]
        # a thousand sources per scan: plain loads and in-place sums, added in the order of
        # `readings` (pid order) as before, so the float totals are the same to the last bit
        live: dict[str, list[float]] = {}
        rss: dict[str, float] = {}
        procs: dict[str, int] = {}
        sources: dict[str, tuple[str, list[float]]] = {}
        before = state.sources
        for key, r in readings.items():
            values, user = r.counters, r.user
            prev = before.get(key)
            if prev is not None:
                last = prev[1]
                if values[0] < last[0] or values[1] < last[1] or values[2] < last[2]:
                    # a kernel counter went back: a new source under a reused key
                    st = state.users.setdefault(prev[0], _UserState([0.0] * 3, [0.0] * 3))
                    st.exited = [a + b for a, b in zip(st.exited, last, strict=True)]
            sources[key] = (user, values)
            acc = live.get(user)
            if acc is None:
                acc = live[user] = [0.0, 0.0, 0.0]
                rss[user] = 0.0
                procs[user] = 0
            acc[0] += values[0]
            acc[1] += values[1]
            acc[2] += values[2]
            rss[user] += r.rss
            procs[user] += r.procs
        state.sources = sources

        series: list[wire.Series] = []
        for user in sorted(set(live) | set(state.users)):
            st = state.users.get(user)
            if st is None:
                st = state.users[user] = _UserState([0.0] * 3, [0.0] * 3, created=state.last_scan)
            if user not in live:
                if st.parked:
                    continue
                st.parked = True
            else:
                st.parked = False
            own = live.get(user, [0.0, 0.0, 0.0])
            totals = [max(r, e + v) for r, e, v in zip(st.reported, st.exited, own, strict=True)]
            st.reported = totals
            labels = {"user": user, "node": self.node}
            for metric, value in zip(_COUNTERS, totals, strict=True):
                series.append(sample(metric, labels, now, value, created=st.created))
            series.append(sample("user_memory_rss_bytes", labels, now, rss.get(user, 0.0)))
            series.append(sample("user_processes", labels, now, procs.get(user, 0)))
        return series

    def _node_series(self, now: float) -> list[wire.Series]:
        labels = {"node": self.node}
        out = [
            sample("node_hepscore23_per_core", labels, now, self.hepscore23_per_core),
            sample("agent_excluded_processes", labels, now, self._excluded),
        ]
        cores = self._ps.cpu_count()
        if cores:
            out.append(sample("node_cpu_cores", labels, now, cores))
        out.append(sample("node_memory_bytes", labels, now, self._ps.virtual_memory().total))
        ct = self._ps.cpu_times()
        # guest time is already inside user/nice (psutil's cpu_percent does the same)
        total = sum(ct) - getattr(ct, "guest", 0.0) - getattr(ct, "guest_nice", 0.0)
        busy = total - ct.idle - getattr(ct, "iowait", 0.0)
        prev = self._state.cpu
        if prev is not None and total > prev[1]:
            ratio = (busy - prev[0]) / (total - prev[1])
            out.append(sample("node_cpu_busy_ratio", labels, now, min(1.0, max(0.0, ratio))))
        self._state.cpu = [busy, total]
        return out

    # -- persistence ---------------------------------------------------------------------

    def _load_state(self) -> _State:
        if self.state_path is None or not self.state_path.exists():
            return _State()
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=_State)
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("host probe state %s unreadable, starting afresh: %s", self.state_path, exc)
            return _State()

    def _save_state(self) -> None:
        """Write-then-rename; no fsync: losing it in a power cut only restarts the counters."""
        if self.state_path is None:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(self._state))
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("cannot save host probe state to %s: %s", self.state_path, exc)
