"""The Slurm probe: finished jobs from `sacct`, one `batch_job` event per run of a job.

Each collection asks sacct for the job runs that *ended* in a window (`--state` with end
states and `-S`/`-E` select on the end time): from the cursor (minus an overlap, for records
that reach slurmdbd late) to now. Steps (`123.batch`, `123.0`, `123_4.extern`) are not jobs:
the allocation line already carries their summed TotalCPU, so only allocations become events,
array tasks (`123_4`) each as their own job.

Record identity is `JobIDRaw` plus the run's start: sacct prints an array task first under its
raw id (`9`) and, once slurmdbd has its array fields, as `4_0`; the raw id never changes. A
requeued job has one record per run, but only with `--duplicates`: each earlier run ends in
state `REQUEUED` (an end state here), so every run is accounted once, under its own start.

A record can reach sacct before slurmdbd has all of it: an array task that just ended is
printed for a few seconds with no Partition and QOS `Unknown` (and under its raw id), and a
job's TotalCPU (its steps' sum) grows until its last step (often `extern`) has ended. Such a
record is held back until it is complete, at most `settle_seconds` after its end (then it is
sent as it is, with `attrs["incomplete"]`, and logged); the overlap re-reads it meanwhile.

A run seen twice is sent once (ids seen in the overlap are remembered), and the ingest counts
an event once by (facility, kind, id) anyway. The cursor and those ids persist in
`state_path`, so a restart neither misses nor repeats.

Jobs that ended without ever starting (cancelled while pending) used no resources and are
not sent; they are counted in the log.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput

log = logging.getLogger(__name__)

FIELDS = (
    "JobID", "JobIDRaw", "Cluster", "User", "Account", "Partition", "Submit", "Start", "End",
    "ElapsedRaw", "AllocCPUS", "TotalCPU", "AllocTRES", "State", "ExitCode", "NodeList", "QOS",
)  # fmt: skip
# Every state a job run can end in (sacct --state abbreviations): with --duplicates a run
# ended by a requeue is REQUEUED (RQ), one ended by a resize RESIZING (RS).
END_STATES = "BF,CA,CD,DL,F,NF,OOM,PR,RQ,RS,RV,TO"
# sacct prints and parses times in the local zone of its process: make that UTC.
SACCT_ENV = {"TZ": "UTC", "SLURM_TIME_FORMAT": "%Y-%m-%dT%H:%M:%S"}

Runner = Callable[[Sequence[str], dict[str, str]], str]


def run_command(argv: Sequence[str], env: dict[str, str]) -> str:
    """Run `argv` with `env` added to this process's environment; its stdout."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()[:500]}")
    return proc.stdout


_DURATION = re.compile(r"^(?:(?:(\d+)-)?(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


def parse_duration(text: str) -> float:
    """Slurm's `[DD-[HH:]]MM:SS[.mmm]` (as in TotalCPU, Elapsed) -> seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"not a Slurm duration: {text!r}")
    days, hours, minutes, seconds = m.groups()
    if days is not None and hours is None:
        raise ValueError(f"not a Slurm duration: {text!r}")
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def parse_time(text: str) -> float | None:
    """A sacct time printed in UTC (`SACCT_ENV`) -> epoch seconds; None for Unknown/None."""
    text = text.strip()
    if text in ("", "Unknown", "None"):
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


def gpus_of(tres: str) -> int:
    """GPUs in an AllocTRES string: `gres/gpu=N`, else the sum of typed `gres/gpu:TYPE=N`."""
    total, typed = None, 0
    for item in tres.split(","):
        name, _, value = item.partition("=")
        if name == "gres/gpu":
            total = int(value)
        elif name.startswith("gres/gpu:"):
            typed += int(value)
    return typed if total is None else total


def first_node(nodelist: str) -> str:
    """The first host of a Slurm hostlist: `n[03-05,7],m1` -> `n03`."""
    m = re.match(r"^([^,\[]*)(?:\[([^\],-]+))?", nodelist.strip())
    return "" if m is None else m.group(1) + (m.group(2) or "")


@dataclass(frozen=True)
class SlurmJob:
    """One finished run of a job allocation as sacct reports it."""

    job_id: str  # as sacct prints it: `4_0` for an array task (or its raw id, early on)
    job_id_raw: str  # the record's own id, stable from submission on
    cluster: str
    user: str
    account: str
    partition: str
    submit: float
    start: float
    end: float
    wall_seconds: int
    cores: int
    cpu_seconds: float
    gpus: int
    state: str
    exit_code: int
    signal: int
    nodelist: str
    qos: str = ""
    steps_open: bool = False  # a step of this run has no end yet

    @property
    def incomplete(self) -> bool:
        """Not yet all in slurmdbd: every job runs in a partition and has a QoS, and its
        TotalCPU (the sum of its steps') is final only once every step has ended."""
        return not self.partition or self.qos in ("", "Unknown") or self.steps_open

    @property
    def event_id(self) -> str:
        """`slurm:<cluster>:<JobIDRaw>@<run start>`: one id per run, whatever sacct prints."""
        return f"slurm:{self.cluster}:{self.job_id_raw}@{int(self.start)}"

    @property
    def legacy_ids(self) -> tuple[str, ...]:
        """The ids afmon used before runs had their own (the printed JobID): a cursor saved
        by an older agent remembers jobs under these."""
        return (f"slurm:{self.cluster}:{self.job_id}", f"slurm:{self.cluster}:{self.job_id_raw}")

    def to_event(self) -> wire.Event:
        extra: dict[str, str | int | float | bool] = {"incomplete": True} if self.incomplete else {}
        return wire.Event(
            kind="batch_job",
            id=self.event_id,
            user=self.user,
            start=self.start,
            end=self.end,
            attrs={
                "scheduler": "slurm",
                "cluster": self.cluster,
                "partition": self.partition,
                "account": self.account,
                "qos": self.qos,
                "job_id": self.job_id,
                "job_id_raw": self.job_id_raw,
                "requeued": self.state == "REQUEUED",
                "submit": self.submit,
                "wall_seconds": self.wall_seconds,
                "cpu_seconds": self.cpu_seconds,
                "cores": self.cores,
                "gpus": self.gpus,
                "state": self.state,
                "exit_code": self.exit_code,
                "signal": self.signal,
                "queue_wait_seconds": max(0.0, self.start - self.submit),
                "node": first_node(self.nodelist),
                "nodes": self.nodelist,
                **extra,
            },
        )


@dataclass
class ParseResult:
    jobs: list[SlurmJob]
    never_started: int = 0
    bad_lines: int = 0


def parse_sacct(text: str) -> ParseResult:
    """`sacct -P -n -D --format=FIELDS` output -> finished job runs (steps skipped)."""
    result = ParseResult([])
    open_steps: dict[str, list[float | None]] = {}  # raw job id -> starts of unended steps
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != len(FIELDS):
            log.warning("sacct line %d has %d fields, not %d: %r", n, len(parts), len(FIELDS), line)
            result.bad_lines += 1
            continue
        f = dict(zip(FIELDS, parts, strict=True))
        if "." in f["JobID"]:  # a step: its usage is in the allocation's line, once it ended
            if f["End"] in ("", "Unknown") or f["State"].startswith(("RUNNING", "PENDING")):
                raw = (f["JobIDRaw"] or f["JobID"]).split(".", 1)[0]
                try:
                    open_steps.setdefault(raw, []).append(parse_time(f["Start"]))
                except ValueError:
                    open_steps.setdefault(raw, []).append(None)
            continue
        try:
            start, end = parse_time(f["Start"]), parse_time(f["End"])
            if end is None:
                continue  # still running: sent once it has ended
            if start is None:
                result.never_started += 1
                continue
            if not f["User"]:
                raise ValueError("no user")
            code, _, sig = f["ExitCode"].partition(":")
            submit = parse_time(f["Submit"])
            result.jobs.append(
                SlurmJob(
                    job_id=f["JobID"],
                    job_id_raw=f["JobIDRaw"] or f["JobID"],
                    cluster=f["Cluster"] or "slurm",
                    user=f["User"],
                    account=f["Account"],
                    partition=f["Partition"],
                    submit=start if submit is None else submit,
                    start=start,
                    end=end,
                    wall_seconds=int(f["ElapsedRaw"]),
                    cores=int(f["AllocCPUS"]),
                    cpu_seconds=parse_duration(f["TotalCPU"]),
                    gpus=gpus_of(f["AllocTRES"]),
                    state=f["State"].split()[0] if f["State"] else "UNKNOWN",
                    exit_code=int(code or 0),
                    signal=int(sig or 0),
                    nodelist=f["NodeList"],
                    qos=f["QOS"],
                )
            )
        except ValueError as exc:
            log.warning("sacct line %d (job %s) is not usable: %s: %r", n, f["JobID"], exc, line)
            result.bad_lines += 1
    if open_steps:  # a run's unended step: its start is in the run (or not known)
        result.jobs = [
            replace(j, steps_open=True)
            if any(t is None or t >= j.start for t in open_steps.get(j.job_id_raw, ()))
            else j
            for j in result.jobs
        ]
    return result


class _CursorState(msgspec.Struct):
    cursor: float
    seen: dict[str, float] = {}  # event id -> end time, for ids inside the overlap


class JobCursor:
    """Where a batch probe has read up to: an end-time cursor and the ids seen near it.

    `window(now)` is [cursor - overlap, now] (the first one reaches back `lookback`);
    `fresh(id, end)` is true once per id; `advance(end)` moves the cursor and persists it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        lookback_seconds: float,
        overlap_seconds: float,
        name: str,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.lookback_seconds = lookback_seconds
        self.overlap_seconds = overlap_seconds
        self.name = name
        self._state = self._load()

    def window(self, now: float) -> tuple[float, float]:
        if self._state is None:
            self._state = _CursorState(cursor=now - self.lookback_seconds)
        return self._state.cursor - self.overlap_seconds, float(int(now))

    def seen(self, event_id: str, aliases: Sequence[str] = ()) -> bool:
        """Whether `event_id`, or one of `aliases` (an id the same record had in an older
        agent's state), was seen."""
        assert self._state is not None, "call window() first"
        seen = self._state.seen
        return event_id in seen or any(a in seen for a in aliases)

    def fresh(self, event_id: str, end: float, aliases: Sequence[str] = ()) -> bool:
        """True once per id (and never when `seen(event_id, aliases)`)."""
        assert self._state is not None, "call window() first"
        if self.seen(event_id, aliases):
            return False
        self._state.seen[event_id] = end
        return True

    def advance(self, end: float) -> None:
        state = self._state
        assert state is not None, "call window() first"
        state.cursor = max(state.cursor, end)
        horizon = state.cursor - self.overlap_seconds
        state.seen = {k: t for k, t in state.seen.items() if t >= horizon}
        self._save()

    def _load(self) -> _CursorState | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=_CursorState)
        except (OSError, msgspec.DecodeError) as exc:
            log.warning(
                "%s probe state %s unreadable, starting afresh: %s", self.name, self.path, exc
            )
            return None

    def _save(self) -> None:
        if self.path is None or self._state is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(self._state))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s probe state to %s: %s", self.name, self.path, exc)


class SlurmProbe:
    """Finished Slurm jobs as `batch_job` events; see the module docstring."""

    name = "slurm"

    def __init__(
        self,
        *,
        sacct: Sequence[str] = ("sacct",),
        runner: Runner = run_command,
        state_path: str | os.PathLike[str] | None = None,
        lookback_seconds: float = 3600.0,
        overlap_seconds: float = 600.0,
        settle_seconds: float | None = None,
    ) -> None:
        """`settle_seconds`: how long after its end an incomplete record is held back
        (default half the overlap, so the overlap still re-reads it)."""
        self.sacct = list(sacct)
        self.runner = runner
        self.settle_seconds = overlap_seconds / 2 if settle_seconds is None else settle_seconds
        self.held_back = 0  # incomplete records the last collection held back
        self.cursor = JobCursor(
            state_path,
            lookback_seconds=lookback_seconds,
            overlap_seconds=overlap_seconds,
            name=self.name,
        )
        self.state = READY

    def query(self, start: float, end: float) -> list[str]:
        """The sacct command line for job runs that ended in [start, end] (`-D`: every run of
        a requeued job, not only its last)."""
        return [
            *self.sacct, "-P", "-n", "-a", "-D", "--format=" + ",".join(FIELDS),
            f"--state={END_STATES}", "-S", _sacct_time(start), "-E", _sacct_time(end),
        ]  # fmt: skip

    def read(self, start: float, end: float) -> ParseResult:
        """Jobs that ended in [start, end], as sacct reports them now (no cursor involved)."""
        return parse_sacct(self.runner(self.query(start, end), dict(SACCT_ENV)))

    def collect(self, now: float) -> ProbeOutput:
        start, end = self.cursor.window(now)
        try:
            result = self.read(start, end)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            self.state = f"sacct failed: {exc}"
            log.warning("slurm probe: %s", self.state)
            return ProbeOutput()
        self.state = READY
        events: list[wire.Event] = []
        self.held_back = 0
        for j in result.jobs:
            if not start <= j.end <= end:
                continue
            if j.incomplete and j.end > end - self.settle_seconds:
                self.held_back += not self.cursor.seen(j.event_id, j.legacy_ids)
                continue  # read again next time, complete by then
            if self.cursor.fresh(j.event_id, j.end, j.legacy_ids):
                if j.incomplete:
                    log.warning(
                        "slurm probe: job %s (run %s) still incomplete in sacct (no partition "
                        "or QoS, or a step not ended) %.0f s after its end; sent as it is",
                        j.job_id, j.event_id, end - j.end,
                    )  # fmt: skip
                events.append(j.to_event())
        if result.never_started:
            log.info(
                "slurm probe: %d jobs ended without starting; not accounted", result.never_started
            )
        self.cursor.advance(end)
        return ProbeOutput(events=events)


def _sacct_time(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%S")
