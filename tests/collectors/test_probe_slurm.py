"""The Slurm probe's parsing and cursor, on sacct output recorded from the real Slurm 22.05
cluster of tests/collectors/slurm_cluster.py (sacct_recorded.txt) plus hand-written lines for
what a single CPU node cannot produce: GPUs, node ranges, a job that never started
(sacct_handmade.txt). The probe against a live Slurm is in test_probe_slurm_cluster.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from afmon.collectors.probes.slurm import (
    END_STATES,
    FIELDS,
    SlurmProbe,
    first_node,
    gpus_of,
    parse_duration,
    parse_sacct,
    parse_time,
)

DATA = Path(__file__).parent / "data"
RECORDED = (DATA / "sacct_recorded.txt").read_text()
HANDMADE = (DATA / "sacct_handmade.txt").read_text()
T_END = parse_time("2026-11-25T19:56:08")  # the last end in the recorded output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:01.526", 1.526),
        ("00:00", 0.0),
        ("05:00", 300.0),
        ("10:02:03.500", 36123.5),
        ("1-02:03:04", 93784.0),
        ("12-00:00:00", 12 * 86400.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text", ["", "abc", "1-05", "01:02:03:04", "-1:00"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm duration"):
        parse_duration(text)


def test_gpus_and_nodes() -> None:
    assert gpus_of("billing=8,cpu=8,gres/gpu=2,gres/gpu:a100=2,mem=64G,node=1") == 2
    assert gpus_of("billing=4,cpu=4,gres/gpu:h100=1,gres/gpu:a100=2,node=1") == 3
    assert gpus_of("billing=1,cpu=1,node=1") == 0
    assert first_node("gpu[01-02]") == "gpu01"
    assert first_node("wn[7,9],gpu3") == "wn7"
    assert first_node("afmon-n1") == "afmon-n1"


def test_recorded_output_gives_one_job_per_allocation() -> None:
    result = parse_sacct(RECORDED)
    assert result.bad_lines == 0 and result.never_started == 0
    jobs = {j.job_id: j for j in result.jobs}
    assert list(jobs) == ["1", "2", "4", "5", "3_0", "3_1", "3_2"]  # no steps, array tasks
    assert jobs["2"].state == "FAILED" and jobs["2"].exit_code == 3
    assert jobs["5"].state == "CANCELLED"  # "CANCELLED by 0"
    assert jobs["4"].cores == 2 and jobs["4"].cpu_seconds == pytest.approx(3.022)
    assert jobs["1"].wall_seconds == 2 and jobs["1"].end - jobs["1"].start == 2
    e = jobs["3_1"].to_event()
    assert e.kind == "batch_job" and e.id == "slurm:afmontest:3_1"
    assert e.user == "afm2b684ca" and e.start == parse_time("2026-11-25T19:55:59")
    assert e.attrs["queue_wait_seconds"] == 6.0
    assert e.attrs["partition"] == "batch" and e.attrs["account"] == "physics"
    assert e.attrs["node"] == "afmon-n1" and e.attrs["gpus"] == 0


def test_gpus_timeouts_and_jobs_that_never_started() -> None:
    result = parse_sacct(HANDMADE)
    assert result.never_started == 1  # 903, cancelled while pending
    jobs = {j.job_id: j.to_event() for j in result.jobs}
    assert set(jobs) == {"901", "902"}
    assert jobs["901"].attrs["gpus"] == 2 and jobs["901"].attrs["cores"] == 8
    assert jobs["901"].attrs["state"] == "TIMEOUT" and jobs["901"].attrs["signal"] == 15
    assert jobs["901"].attrs["cpu_seconds"] == 36123.5
    assert jobs["901"].attrs["node"] == "gpu01" and jobs["901"].attrs["nodes"] == "gpu[01-02]"
    assert jobs["902"].attrs["gpus"] == 1 and jobs["902"].attrs["state"] == "OUT_OF_MEMORY"


def test_bad_lines_are_warned_about_not_dropped_silently(caplog: pytest.LogCaptureFixture) -> None:
    bad = RECORDED.splitlines()[0].replace("00:01.526", "soon")
    with caplog.at_level(logging.WARNING):
        result = parse_sacct(f"{bad}\nonly|three|fields\n")
    assert result.jobs == [] and result.bad_lines == 2
    assert "job 1" in caplog.text and "not a Slurm duration: 'soon'" in caplog.text
    assert "has 3 fields, not 16" in caplog.text


class Recorder:
    """A runner that answers with recorded output and remembers each command line."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: Sequence[str], env: dict[str, str]) -> str:
        self.calls.append((list(argv), env))
        return self.output


def test_windows_move_and_each_job_is_sent_once_even_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "slurm-probe.json"
    runner = Recorder(RECORDED)
    probe = SlurmProbe(
        sacct=["/opt/slurm/bin/sacct"],
        runner=runner,
        state_path=state,
        lookback_seconds=3600,
        overlap_seconds=600,
    )
    now = T_END + 30.7
    first = probe.collect(now).events
    assert len(first) == 7 and probe.state == "ready"
    argv, env = runner.calls[0]
    assert argv[:4] == ["/opt/slurm/bin/sacct", "-P", "-n", "-a"]
    assert argv[4] == "--format=" + ",".join(FIELDS)
    assert argv[5] == f"--state={END_STATES}"
    assert argv[6:] == ["-S", "2026-11-25T18:46:38", "-E", "2026-11-25T19:56:38"]
    assert env["TZ"] == "UTC"  # sacct reads and prints times in UTC

    # the next window overlaps the last one by 10 min; what was sent is not sent again
    assert probe.collect(now + 60).events == []
    assert runner.calls[1][0][6:] == ["-S", "2026-11-25T19:46:38", "-E", "2026-11-25T19:57:38"]
    restarted = SlurmProbe(runner=runner, state_path=state, overlap_seconds=600)
    assert restarted.collect(now + 120).events == []
    assert runner.calls[2][0][6:] == ["-S", "2026-11-25T19:47:38", "-E", "2026-11-25T19:58:38"]
    saved = json.loads(state.read_text())
    assert saved["cursor"] == int(now + 120) and len(saved["seen"]) == 7

    # once their end is older than the overlap they are forgotten, and no longer asked for
    runner.output = ""
    assert restarted.collect(now + 3600).events == []
    assert json.loads(state.read_text())["seen"] == {}


def test_a_failing_sacct_is_reported_and_the_window_kept(tmp_path: Path) -> None:
    def broken(argv: Sequence[str], env: dict[str, str]) -> str:
        raise RuntimeError("sacct exited 1: slurmdbd: Connection refused")

    probe = SlurmProbe(runner=broken, state_path=tmp_path / "s.json")
    assert probe.collect(T_END).events == []
    assert probe.state == "sacct failed: sacct exited 1: slurmdbd: Connection refused"
    assert not (tmp_path / "s.json").exists()  # the cursor did not move
    probe.runner = Recorder(RECORDED)
    assert len(probe.collect(T_END + 10).events) == 7 and probe.state == "ready"


def test_the_agent_runs_the_batch_probes_when_enabled(tmp_path: Path) -> None:
    from afmon.collectors.probes.htcondor import HTCondorProbe
    from afmon.collectors.probes.registry import build_probes
    from afmon.collectors.settings import AgentSettings

    off = build_probes(AgentSettings(gpu_enabled=False), tmp_path)
    assert not {"slurm", "htcondor"} & {p.name for p in off}  # off by default
    settings = AgentSettings(
        gpu_enabled=False,
        slurm_enabled=True,
        sacct_path="/opt/bin/sacct",
        htcondor_enabled=True,
        condor_history_path="/opt/bin/condor_history",
    )
    probes = build_probes(settings, tmp_path)
    slurm, condor = (next(p for p in probes if p.name == n) for n in ("slurm", "htcondor"))
    assert isinstance(slurm, SlurmProbe) and isinstance(condor, HTCondorProbe)
    assert slurm.sacct == ["/opt/bin/sacct"] and condor.condor_history == [
        "/opt/bin/condor_history"
    ]
    assert slurm.cursor.path == tmp_path / "slurm-probe.json"
    assert condor.cursor.path == tmp_path / "htcondor-probe.json"
