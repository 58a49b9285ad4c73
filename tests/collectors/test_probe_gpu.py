"""The GPU probe on the fake NVML: states and failure modes, MIG, GPM, accounting stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from afmon.collectors import wire
from afmon.collectors.probes.gpu import STATES, GpuProbe, model_class
from afmon.collectors.push import PushLoop
from afmon.collectors.spool import Spool
from tests.collectors import fake_nvml as fk


def values(out: object, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.values[-1]
        for s in out.series  # type: ignore[attr-defined]
        if s.metric == metric
    }


def state_of(out: object) -> str:
    on = [dict(k)["state"] for k, v in values(out, "gpu_probe_state").items() if v == 1]
    assert len(on) == 1
    return on[0]


def make(nvml: object, tmp_path: Path, **kw: object) -> GpuProbe:
    return GpuProbe(node="n1", nvml=nvml, proc_root=tmp_path, user_name=fk.USERS.__getitem__,
                    **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (fk.NVML_ERROR_LIBRARY_NOT_FOUND, "library_missing"),
        (fk.NVML_ERROR_DRIVER_NOT_LOADED, "driver_missing"),
        (fk.NVML_ERROR_NO_PERMISSION, "permission_denied"),
        (fk.NVML_ERROR_UNKNOWN, "error"),
    ],
)
def test_init_failures_are_states_and_reported(code: int, state: str, tmp_path: Path) -> None:
    probe = make(fk.FakeNvml([fk.a100()], init_error=code), tmp_path)
    assert probe.state == state
    out = probe.collect(100.0)
    assert state_of(out) == state
    assert len(values(out, "gpu_probe_state")) == len(STATES)  # a bounded state set
    assert not [s for s in out.series if s.metric != "gpu_probe_state"]


def test_no_devices_and_permission_on_handles(tmp_path: Path) -> None:
    assert make(fk.FakeNvml([]), tmp_path).state == "no_devices"
    nvml = fk.FakeNvml([fk.a100()])
    nvml.handle_error = fk.NVML_ERROR_NO_PERMISSION
    probe = make(nvml, tmp_path, retry_seconds=60.0)
    assert state_of(probe.collect(0.0)) == "permission_denied"
    nvml.handle_error = None  # e.g. the device nodes' permissions were fixed
    assert state_of(probe.collect(30.0)) == "permission_denied"  # not retried before 60 s
    assert state_of(probe.collect(61.0)) == "ready"
    assert nvml.init_calls == 1  # NVML itself initialised once per process


def test_module_missing_without_pynvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    probe = GpuProbe(node="n1")
    assert probe.state == "module_missing"
    assert state_of(probe.collect(1.0)) == "module_missing"


def test_agent_keeps_running_and_reports_the_state(tmp_path: Path) -> None:
    """A push loop with a broken GPU probe still builds batches carrying its state."""
    probe = make(fk.FakeNvml([fk.a100()], init_error=fk.NVML_ERROR_DRIVER_NOT_LOADED), tmp_path)
    with httpx.Client() as unused:
        loop = PushLoop(probes=[probe], spool=Spool(tmp_path / "spool"), client=unused,
                        server_url="http://127.0.0.1:9", token=None, facility="f",
                        node="n1")  # fmt: skip
        batch = loop.build_batch(10.0, 0, "a")
    states = {s.labels["state"]: s.values[0] for s in batch.series if s.metric == "gpu_probe_state"}
    assert states["driver_missing"] == 1.0 and states["ready"] == 0.0


def test_real_agent_on_this_gpu_less_machine_reports_its_state(tmp_path: Path) -> None:
    """The real agent with the real pynvml: no NVIDIA library here, so a state, no crash."""
    # AFMON_MIN_UID 0: the test runs as root, which the agent leaves out by default
    env = {**os.environ, "AFMON_SPOOL_DIR": str(tmp_path), "AFMON_NODE": "n1", "AFMON_MIN_UID": "0"}
    r = subprocess.run([sys.executable, "-m", "afmon.collectors.agent", "--print"], env=env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    series = json.loads(r.stdout)["series"]
    on = [s["labels"]["state"] for s in series
          if s["metric"] == "gpu_probe_state" and s["values"] == [1.0]]  # fmt: skip
    assert on == ["library_missing"], r.stderr  # nvidia-ml-py is installed, libnvidia-ml is not
    assert any(s["metric"] == "user_cpu_seconds" for s in series)  # the host probe carries on


def test_gpu_lost_and_hidden_processes_leave_the_probe_running(tmp_path: Path) -> None:
    fk.write_proc(tmp_path, 11, 1001)
    gpus = [fk.a100("GPU-A", util=50, procs=[fk.FakeProc(11, 1, 20)]), fk.a100("GPU-B")]
    nvml = fk.FakeNvml(gpus)
    probe = make(nvml, tmp_path, process_interval=1.0)
    out = probe.collect(0.0)
    assert values(out, "user_gpus_held") == {(("node", "n1"), ("user", "alice")): 1.0}
    gpus[0].lost = True
    out = probe.collect(15.0)
    assert state_of(out) == "ready"
    assert {dict(k)["gpu"] for k in values(out, "gpu_utilization_ratio")} == {"GPU-B"}
    assert values(out, "user_gpus_held") == {(("node", "n1"), ("user", "alice")): 0.0}
    gpus[0].lost = False
    nvml.process_error = fk.NVML_ERROR_NO_PERMISSION
    out = probe.collect(30.0)
    assert set(values(out, "gpu_processes_visible").values()) == {0.0}
    assert "user_gpus_held" not in {s.metric for s in out.series}  # parked: nothing visible


def test_idle_gpu_process_utilisation_not_found_counts_zero(tmp_path: Path) -> None:
    fk.write_proc(tmp_path, 11, 1001)
    fk.write_proc(tmp_path, 12, 1002)
    gpu = fk.a100(util=0, procs=[fk.FakeProc(11, 1, 0), fk.FakeProc(12, 1, 0)])
    out = make(fk.FakeNvml([gpu]), tmp_path).collect(0.0)
    assert set(values(out, "user_gpus_held").values()) == {0.5}
    assert set(values(out, "user_gpu_sm_ratio").values()) == {0.0}
    assert set(values(out, "user_gpu_busy").values()) == {0.0}


def test_mig_instances_and_gpm_busy(tmp_path: Path) -> None:
    fk.write_proc(tmp_path, 11, 1001)
    gpu = fk.h100(migs=[fk.FakeMig("MIG-a", 1, 4, 40 * 2**30, gpm_util=50.0),
                        fk.FakeMig("MIG-b", 2, 3, 30 * 2**30)])  # fmt: skip
    gpu.migs[0].procs.append(fk.FakeProc(11, 2**30))  # type: ignore[index]
    probe = make(fk.FakeNvml([gpu]), tmp_path)
    first = probe.collect(0.0)
    info = {dict(k)["gpu"]: (dict(k), v) for k, v in values(first, "gpu_mig_info").items()}
    assert info["MIG-a"][0]["parent"] == "GPU-h100-0" and info["MIG-a"][0]["busy"] == "gpm"
    assert info["MIG-a"][1] == 4 / 7 and info["MIG-b"][1] == 3 / 7
    assert values(first, "gpu_utilization_ratio") == {}  # NotSupported on MIG; GPM needs 2
    second = probe.collect(15.0)
    busy = {dict(k)["gpu"]: v for k, v in values(second, "gpu_utilization_ratio").items()}
    assert busy == {"MIG-a": 0.5, "MIG-b": 0.0}
    assert values(second, "user_gpus_held") == {(("node", "n1"), ("user", "alice")): 4 / 7}
    assert values(second, "user_gpu_busy") == {(("node", "n1"), ("user", "alice")): 0.5 * 4 / 7}


def test_accounting_stats_of_an_exited_process(tmp_path: Path) -> None:
    fk.write_proc(tmp_path, 11, 1001)
    proc = fk.FakeProc(11, 1, 40)
    gpu = fk.a100(util=40, procs=[proc], accounting=True, accounting_stats={11: (50, 120_000)})
    probe = make(fk.FakeNvml([gpu]), tmp_path, process_interval=1.0)
    out = probe.collect(0.0)
    assert set(values(out, "gpu_accounting_mode").values()) == {1.0}
    gpu.procs.remove(proc)
    out = probe.collect(15.0)
    key = (("node", "n1"), ("user", "alice"))
    assert values(out, "user_gpu_accounting_seconds") == {key: 120.0}
    assert values(out, "user_gpu_accounting_busy_seconds") == {key: 60.0}
    wire.check_batch(wire.Batch(version=1, agent_id="a", facility="f", node="n1", seq=0,
                                sent_at=15.0, series=out.series))  # fmt: skip


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("Tesla V100-SXM2-16GB", "v100"),
        ("Tesla T4", "t4"),
        ("NVIDIA GeForce RTX 4090", "other"),
    ],
)
def test_model_class(name: str, model: str) -> None:
    assert model_class(name) == model
