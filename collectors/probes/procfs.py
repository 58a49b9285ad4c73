"""Per-process readings straight from /proc, for the host probe.

Three small files per process and nothing else: `stat` (parent, CPU ticks, start time),
`status` (real uid, resident memory) and `io` (storage bytes). They are read with os.open and
os.read into bytes and split, without psutil's per-process objects and its second reads of
`stat` and `statm`: at a thousand processes that is most of what the agent costs.

The values are psutil's (what the probe reported when it read them through psutil):

* CPU seconds: (utime + stime) / clock ticks, as psutil's cpu_times().user + .system;
* create time: starttime / clock ticks + btime (/proc/stat), as psutil's create_time();
* RSS: `VmRSS` in status, kB * 1024. The kernel fills it from the same counters as statm's
  resident pages, which psutil multiplies by the page size: the same bytes;
* read and write bytes: `read_bytes` and `write_bytes` in io, as psutil's io_counters().

A process that is gone by the time a file is read is skipped, as psutil's process_iter skips
it; io that may not be read (another account's process, when not root) reads as zero, as
psutil's ad_value gave.
"""

from __future__ import annotations

import os
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STATUS_CHUNK = 4096


class Stat(NamedTuple):
    ppid: int
    zombie: bool
    cpu_seconds: float  # user + system
    start_ticks: int  # clock ticks after boot


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, _STATUS_CHUNK)
    finally:
        os.close(fd)


class ProcFS:
    """Reads processes under a proc root (`/proc`, or a copy of its layout in tests)."""

    def __init__(self, root: str | os.PathLike[str] = "/proc") -> None:
        self.root = os.fspath(root)

    def pids(self) -> list[int]:
        """Live pids, lowest first (the order psutil's process_iter gives)."""
        return sorted(int(name) for name in os.listdir(self.root) if name.isdigit())

    def boot_time(self) -> float:
        """Seconds since the epoch at boot: `btime` in /proc/stat (psutil's boot_time())."""
        with open(os.path.join(self.root, "stat"), "rb") as fh:
            for line in fh:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
        raise RuntimeError(f"no btime line in {self.root}/stat")

    def stat(self, pid: int) -> Stat | None:
        """Parent, zombie or not, CPU seconds and start of a process; None when it is gone."""
        try:
            data = _read(f"{self.root}/{pid}/stat")
        except OSError:
            return None
        # the command name, in parentheses, may hold spaces and parentheses itself
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) < 20:
            return None
        return Stat(
            ppid=int(fields[1]),
            zombie=fields[0] == b"Z",
            cpu_seconds=int(fields[11]) / CLOCK_TICKS + int(fields[12]) / CLOCK_TICKS,
            start_ticks=int(fields[19]),
        )

    def status(self, pid: int) -> tuple[int, float] | None:
        """Real uid and resident bytes (0 without memory: a zombie); None when it is gone."""
        try:
            fd = os.open(f"{self.root}/{pid}/status", os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.read(fd, _STATUS_CHUNK)
            # VmRSS comes after Groups, which can be long: read on until it is in
            while b"\nVmRSS:" not in data and b"\nThreads:" not in data:
                more = os.read(fd, _STATUS_CHUNK)
                if not more:
                    break
                data += more
        except OSError:
            return None
        finally:
            os.close(fd)
        at = data.find(b"\nUid:")
        if at < 0:
            return None
        uid = int(data[at + 6 : data.find(b"\t", at + 6)])  # "Uid:\treal\teffective..."
        at = data.find(b"\nVmRSS:")
        rss = 0.0 if at < 0 else float(int(data[at + 7 : data.find(b"kB", at)]) * 1024)
        return uid, rss

    def cgroup(self, pid: int) -> str | None:
        """The text of /proc/PID/cgroup; None when the process is gone."""
        try:
            with open(f"{self.root}/{pid}/cgroup", "rb") as fh:
                return fh.read().decode(errors="replace")
        except OSError:
            return None

    def io(self, pid: int, zombie: bool) -> tuple[float, float] | None:
        """(read_bytes, write_bytes): (0, 0) if not readable; None when the process is gone."""
        try:
            data = _read(f"{self.root}/{pid}/io")
        except PermissionError:
            return 0.0, 0.0
        except OSError:
            return (0.0, 0.0) if zombie else None
        at = data.find(b"read_bytes: ")
        if at < 0:
            return 0.0, 0.0
        end = data.find(b"\n", at)
        read = float(data[at + 12 : end])
        at = data.find(b"write_bytes: ", end)
        return read, float(data[at + 13 : data.find(b"\n", at)])
