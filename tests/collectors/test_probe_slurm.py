"""The Slurm probe's parsing and cursor, on sacct output recorded from the real Slurm 22.05
cluster of tests/collectors/slurm_cluster.py (sacct_recorded.txt; its last column, QOS, was
added as sacct prints it: `normal` on allocations, empty on steps) plus hand-written lines for
what a single CPU node cannot produce: GPUs, node ranges, a job that never started, other QoS
(sacct_handmade.txt), and a requeued job as `sacct --duplicates` prints it. The probe against a
live Slurm (arrays polled while they run, a real requeue) is in test_probe_slurm_cluster.py."""

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
    assert [jobs[k].job_id_raw for k in ("3_0", "3_1", "3_2")] == ["6", "7", "3"]
    assert jobs["2"].state == "FAILED" and jobs["2"].exit_code == 3
    assert jobs["5"].state == "CANCELLED"  # "CANCELLED by 0"
    assert jobs["4"].cores == 2 and jobs["4"].cpu_seconds == pytest.approx(3.022)
    assert jobs["1"].wall_seconds == 2 and jobs["1"].end - jobs["1"].start == 2
    e = jobs["3_1"].to_event()
    # identity: the raw id (7, whatever sacct prints) and the run's start
    assert e.kind == "batch_job" and e.id == f"slurm:afmontest:7@{int(e.start)}"
    assert e.attrs["job_id"] == "3_1" and e.attrs["job_id_raw"] == "7"
    assert e.attrs["qos"] == "normal" and e.attrs["requeued"] is False
    assert e.user == "afm2b684ca" and e.start == parse_time("2026-11-25T19:55:59")
    assert e.attrs["queue_wait_seconds"] == 6.0
    assert e.attrs["partition"] == "batch" and e.attrs["account"] == "physics"
    assert e.attrs["node"] == "afmon-n1" and e.attrs["gpus"] == 0


def test_gpus_timeouts_and_jobs_that_never_started() -> None:
    result = parse_sacct(HANDMADE)
    assert result.never_started == 1  # 903, cancelled while pending
    jobs = {j.job_id: j.to_event() for j in result.jobs if j.job_id != "904"}
    assert set(jobs) == {"901", "902"}
    assert jobs["901"].attrs["qos"] == "gpu-high" and jobs["901"].attrs["account"] == "atlas"
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
    assert "has 3 fields, not 17" in caplog.text


def test_a_requeued_job_is_one_event_per_run() -> None:
    """`sacct -D` prints each run of a requeued job: the first ended REQUEUED (20 min on 4
    cores), the second COMPLETED (1 h). Both are accounted, each under its own start."""
    runs = [j for j in parse_sacct(HANDMADE).jobs if j.job_id == "904"]
    assert [(r.state, r.wall_seconds, r.cores, r.qos) for r in runs] == [
        ("REQUEUED", 1200, 4, "long"),
        ("COMPLETED", 3600, 4, "long"),
    ]
    first, second = (r.to_event() for r in runs)
    assert first.id == f"slurm:af1:904@{int(parse_time('2026-11-25T09:05:00') or 0)}"
    assert second.id == f"slurm:af1:904@{int(parse_time('2026-11-25T09:27:00') or 0)}"
    assert first.attrs["requeued"] is True and second.attrs["requeued"] is False
    assert first.attrs["cpu_seconds"] == 4200 and second.attrs["cpu_seconds"] == 13800
    assert first.attrs["node"] == "wn05" and second.attrs["node"] == "wn06"
    # the second run waited from the requeue (its Submit) to its start
    assert second.attrs["queue_wait_seconds"] == 120


def early(line: str) -> str:
    """An allocation line as sacct prints it for the first seconds after an array task
    ended (seen on the real cluster): under its raw id, no Partition, QOS `Unknown`."""
    f = line.split("|")
    f[FIELDS.index("JobID")] = f[FIELDS.index("JobIDRaw")]
    f[FIELDS.index("Partition")] = ""
    f[FIELDS.index("QOS")] = "Unknown"
    return "|".join(f)


def test_an_array_task_printed_first_by_its_raw_id_is_sent_once_and_complete(
    tmp_path: Path,
) -> None:
    """sacct prints an array task that just ended under its raw id (`7`), without partition
    and QoS, and, once slurmdbd has all of it, as `3_1`: one record, held back until it is
    complete and then sent once. Keyed by the raw id, it would be the same event anyway."""
    task = next(line for line in RECORDED.splitlines() if line.startswith("3_1|"))
    runner = Recorder(early(task) + "\n")
    probe = SlurmProbe(runner=runner, state_path=tmp_path / "s.json")
    assert probe.collect(T_END + 30).events == [] and probe.held_back == 1
    assert probe.collect(T_END + 31).events == [] and probe.held_back == 1
    runner.output = task + "\n"
    (sent,) = probe.collect(T_END + 32).events
    assert probe.held_back == 0
    assert (sent.attrs["job_id"], sent.attrs["partition"], sent.attrs["qos"]) == (
        "3_1", "batch", "normal",
    )  # fmt: skip
    assert "incomplete" not in sent.attrs
    assert (
        sent.id
        == parse_sacct(early(task)).jobs[0].event_id
        == "slurm:afmontest:7@" + str(int(parse_time("2026-11-25T19:55:59") or 0))
    )
    assert probe.collect(T_END + 40).events == []


def test_a_record_that_stays_incomplete_is_sent_after_the_settle_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = early(next(line for line in RECORDED.splitlines() if line.startswith("3_1|")))
    probe = SlurmProbe(runner=Recorder(task), state_path=tmp_path / "s.json", settle_seconds=60)
    end = parse_sacct(task).jobs[0].end
    assert probe.collect(end + 59).events == [] and probe.held_back == 1
    with caplog.at_level(logging.WARNING):
        (sent,) = probe.collect(end + 61).events
    assert sent.attrs["incomplete"] is True and sent.attrs["qos"] == "Unknown"
    assert "job 7 (run slurm:afmontest:7@" in caplog.text and "sent as it is" in caplog.text
    assert probe.collect(end + 70).events == []


def test_a_run_whose_step_has_not_ended_is_held_back_until_its_cpu_is_final(
    tmp_path: Path,
) -> None:
    """An allocation line can end before its last step (often `extern`) is in slurmdbd;
    meanwhile its TotalCPU (the steps' sum) is short (0.675 s where sacct later says 0.678 s,
    seen on the real cluster under load). Held back until every step has ended."""
    task = next(line for line in RECORDED.splitlines() if line.startswith("3_1|"))
    f = task.split("|")
    step = list(f)
    step[FIELDS.index("JobID")] = "3_1.extern"
    step[FIELDS.index("JobIDRaw")] = f[FIELDS.index("JobIDRaw")] + ".extern"
    step[FIELDS.index("End")] = "Unknown"
    step[FIELDS.index("State")] = "RUNNING"
    short = list(f)
    short[FIELDS.index("TotalCPU")] = "00:00.675"
    final = list(f)
    final[FIELDS.index("TotalCPU")] = "00:00.678"
    ended = list(step)
    ended[FIELDS.index("End")] = f[FIELDS.index("End")]
    ended[FIELDS.index("State")] = "COMPLETED"
    runner = Recorder("|".join(short) + "\n" + "|".join(step) + "\n")
    probe = SlurmProbe(runner=runner, state_path=tmp_path / "s.json")
    assert probe.collect(T_END + 30).events == [] and probe.held_back == 1
    runner.output = "|".join(final) + "\n" + "|".join(ended) + "\n"
    (sent,) = probe.collect(T_END + 31).events
    assert sent.attrs["cpu_seconds"] == 0.678 and "incomplete" not in sent.attrs


def test_a_cursor_saved_by_an_older_agent_is_honoured(tmp_path: Path) -> None:
    """Agents before run identities keyed jobs by the printed JobID: jobs they sent inside
    the overlap are not sent again under their new ids after an upgrade."""
    state = tmp_path / "slurm-probe.json"
    end = parse_time("2026-11-25T19:56:08")
    old = {f"slurm:afmontest:{j}": end for j in ("1", "2", "4", "5", "3_0", "3_1", "3_2")}
    state.write_text(json.dumps({"cursor": T_END, "seen": old}))
    probe = SlurmProbe(runner=Recorder(RECORDED), state_path=state)
    assert probe.collect(T_END + 60).events == []


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
    assert argv[:5] == ["/opt/slurm/bin/sacct", "-P", "-n", "-a", "-D"]  # every run
    assert argv[5] == "--format=" + ",".join(FIELDS)
    assert argv[6] == f"--state={END_STATES}" and "RQ" in END_STATES.split(",")
    assert argv[7:] == ["-S", "2026-11-25T18:46:38", "-E", "2026-11-25T19:56:38"]
    assert env["TZ"] == "UTC"  # sacct reads and prints times in UTC

    # the next window overlaps the last one by 10 min; what was sent is not sent again
    assert probe.collect(now + 60).events == []
    assert runner.calls[1][0][7:] == ["-S", "2026-11-25T19:46:38", "-E", "2026-11-25T19:57:38"]
    restarted = SlurmProbe(runner=runner, state_path=state, overlap_seconds=600)
    assert restarted.collect(now + 120).events == []
    assert runner.calls[2][0][7:] == ["-S", "2026-11-25T19:47:38", "-E", "2026-11-25T19:58:38"]
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
