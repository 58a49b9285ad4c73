"""The HTCondor probe: finished jobs from `condor_history -json`, one `batch_job` event each.

Like the Slurm probe it reads by completion time (`-completedsince`, from a persisted cursor
minus an overlap) and sends each job once, keyed by its GlobalJobId. HTCondor daemons cannot
run on afmon's test machines: this probe is tested against `condor_history -json` output
shaped exactly like the documented format (tests/collectors/data/).

Cores and GPUs are what the slot provisioned for the job (`CpusProvisioned`,
`GPUsProvisioned`) when those are literal numbers, else what the job requested (`RequestCpus`,
`RequestGpus`): a request may be an expression (condor_history -json prints it as a string,
`/Expr(...)/` once decoded), which only the provisioned figure resolves. ClassAd attribute
names are case-insensitive (`RequestGPUs` and `RequestGpus` are one attribute), and so is the
lookup here. `attrs["cores_from"]` names the attribute the cores came from.

A job with missing attributes is never dropped silently: what can be derived is derived
(wall time from the dates, one core when neither CpusProvisioned nor RequestCpus is a number,
no CPU time when the CPU attributes are absent), the job carries `attrs["missing"]` naming what
was absent, and the probe logs a warning naming the job and the attributes. Only a job that
never started (no JobStartDate and no wall time) or never ended is left out, and that is
logged too.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput
from afmon.collectors.probes.slurm import JobCursor, Runner, run_command

log = logging.getLogger(__name__)

ATTRIBUTES = (
    "GlobalJobId", "ClusterId", "ProcId", "Owner", "AcctGroup", "RemoteWallClockTime",
    "RemoteUserCpu", "RemoteSysCpu", "RequestCpus", "RequestGpus", "CpusProvisioned",
    "GPUsProvisioned", "QDate", "JobStartDate", "CompletionDate", "EnteredCurrentStatus",
    "JobStatus", "ExitCode", "LastRemoteHost",
)  # fmt: skip
UNKNOWN_OWNER = "htcondor-unknown-owner"  # maps to the facility's unmapped member
STATUS = {1: "IDLE", 2: "RUNNING", 3: "REMOVED", 4: "COMPLETED", 5: "HELD", 7: "SUSPENDED"}


@dataclass
class HistoryResult:
    events: list[wire.Event] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    left_out: int = 0


def _number(ad: dict[str, Any], name: str) -> float | None:
    """A numeric attribute, or None when absent or not a literal number (an expression).
    `ad` has lower-case keys (`job_event` makes them so)."""
    value = ad.get(name.lower())
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def job_event(ad: dict[str, Any], warnings: list[str]) -> wire.Event | None:
    """One history ClassAd -> a `batch_job` event (None: the job never ran or never ended)."""
    ad = {str(k).lower(): v for k, v in ad.items()}  # ClassAd names are case-insensitive
    missing: list[str] = []

    def need(name: str) -> float | None:
        value = _number(ad, name)
        if value is None:
            missing.append(name)
        return value

    gid = ad.get("globaljobid")
    if not isinstance(gid, str) or not gid:
        missing.append("GlobalJobId")
        cluster, proc = _number(ad, "ClusterId"), _number(ad, "ProcId")
        if cluster is None:
            warnings.append(
                "a job without GlobalJobId and ClusterId cannot be identified; left out"
            )
            return None
        gid = f"{int(cluster)}.{int(proc or 0)}#{int(_number(ad, 'QDate') or 0)}"
    end = _number(ad, "CompletionDate") or None  # 0 for removed jobs
    if end is None:
        end = _number(ad, "EnteredCurrentStatus")
        if end is None:
            warnings.append(f"job {gid}: no CompletionDate or EnteredCurrentStatus; left out")
            return None
        missing.append("CompletionDate")
    wall = need("RemoteWallClockTime")
    start = _number(ad, "JobStartDate")
    if start is None:
        if not wall:
            return None  # never started: no usage
        missing.append("JobStartDate")
        start = end - wall
    if wall is None:
        wall = end - start
    user_cpu, sys_cpu = need("RemoteUserCpu"), need("RemoteSysCpu")
    cores, cores_from = _resource(ad, "CpusProvisioned", "RequestCpus", 1)
    if cores is None:
        missing.append("RequestCpus")  # nothing numeric: HTCondor's default, one core
        cores, cores_from = 1.0, "default"
    gpus, _ = _resource(ad, "GPUsProvisioned", "RequestGpus", 0)
    qdate = need("QDate")
    owner = ad.get("owner")
    if not isinstance(owner, str) or not owner:
        missing.append("Owner")
        owner = UNKNOWN_OWNER
    host = ad.get("lastremotehost")
    status = _number(ad, "JobStatus")
    attrs: dict[str, str | int | float | bool] = {
        "scheduler": "htcondor",
        "account": str(ad.get("acctgroup") or ""),
        "submit": start if qdate is None else qdate,
        "wall_seconds": wall,
        "cpu_seconds": (user_cpu or 0.0) + (sys_cpu or 0.0),
        "cores": int(cores),
        "cores_from": cores_from,
        "gpus": int(gpus or 0),
        "state": STATUS.get(int(status), str(int(status))) if status is not None else "UNKNOWN",
        "exit_code": int(_number(ad, "ExitCode") or 0),
        "queue_wait_seconds": 0.0 if qdate is None else max(0.0, start - qdate),
        "node": host.rpartition("@")[2] if isinstance(host, str) else "",
    }
    if missing:
        attrs["missing"] = ",".join(missing)
        warnings.append(
            f"job {gid} ({owner}) lacks {', '.join(missing)}: derived or defaulted, see the docs"
        )
    return wire.Event(
        kind="batch_job",
        id=f"htcondor:{gid}",
        user=owner,
        start=start,
        end=max(end, start),
        attrs=attrs,
    )


def _resource(
    ad: dict[str, Any], provisioned: str, requested: str, least: float
) -> tuple[float | None, str]:
    """(amount, the attribute it came from): the slot's provisioned amount when it is a
    literal number of at least `least`, else the job's request on the same terms, else
    (None, "")."""
    for name in (provisioned, requested):
        value = _number(ad, name)
        if value is not None and value >= least:
            return value, name
    return None, ""


def parse_history(text: str) -> HistoryResult:
    """`condor_history -json` output (a JSON array of ClassAds) -> events and warnings."""
    result = HistoryResult()
    if not text.strip():
        return result  # condor_history prints nothing when no job matched
    ads = json.loads(text)
    if not isinstance(ads, list):
        raise ValueError("condor_history -json did not print a JSON array")
    for i, ad in enumerate(ads):
        if not isinstance(ad, dict):
            result.warnings.append(f"history entry {i} is not a ClassAd object; left out")
            result.left_out += 1
            continue
        event = job_event(ad, result.warnings)
        if event is None:
            result.left_out += 1
        else:
            result.events.append(event)
    return result


class HTCondorProbe:
    """Finished HTCondor jobs as `batch_job` events; see the module docstring."""

    name = "htcondor"

    def __init__(
        self,
        *,
        condor_history: Sequence[str] = ("condor_history",),
        runner: Runner = run_command,
        state_path: str | os.PathLike[str] | None = None,
        lookback_seconds: float = 3600.0,
        overlap_seconds: float = 600.0,
    ) -> None:
        self.condor_history = list(condor_history)
        self.runner = runner
        self.cursor = JobCursor(
            state_path,
            lookback_seconds=lookback_seconds,
            overlap_seconds=overlap_seconds,
            name=self.name,
        )
        self.state = READY

    def query(self, start: float) -> list[str]:
        """The condor_history command line for jobs completed since `start`."""
        return [
            *self.condor_history,
            "-json",
            "-completedsince",
            str(int(start)),
            "-attributes",
            ",".join(ATTRIBUTES),
        ]

    def collect(self, now: float) -> ProbeOutput:
        start, end = self.cursor.window(now)
        try:
            result = parse_history(self.runner(self.query(start), {}))
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            self.state = f"condor_history failed: {exc}"
            log.warning("htcondor probe: %s", self.state)
            return ProbeOutput()
        self.state = READY
        for warning in result.warnings:
            log.warning("htcondor probe: %s", warning)
        if result.left_out:
            log.info(
                "htcondor probe: %d jobs never ran or cannot be identified; not accounted",
                result.left_out,
            )
        events = [
            e for e in result.events
            if e.end is not None and start <= e.end <= end and self.cursor.fresh(e.id, e.end)
        ]  # fmt: skip
        self.cursor.advance(end)
        return ProbeOutput(events=events)
