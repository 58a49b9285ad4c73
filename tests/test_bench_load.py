"""bench/load.py: a smoke run (few agents, short scenarios, no timing asserted) whose ledger
check must pass, on SQLite beside VictoriaMetrics and on PostgreSQL with two workers; and the
check itself must catch a lost or doubled batch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "load.py"
SMALL = [
    "--quick",
    "--users", "5",
    "--interval", "2",
    "--closed-agents", "2",
    "--closed-batches", "5",
    "--open-agents", "6",
    "--open-seconds", "4",
    "--catchup-agents", "2",
    "--catchup-minutes", "2",
]  # fmt: skip


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_smoke_sqlite_beside_victoriametrics() -> None:
    out = run(*SMALL).stdout
    assert "ledger check: PASSED" in out
    assert "MISMATCH" not in out
    for scenario in ("closed 2 agents", "open 6 agents", "catch-up 2x2 min"):
        assert out.count(scenario) == 2, out  # afmon and VictoriaMetrics rows
    assert "VictoriaMetrics holds" in out and "(ok)" in out


def test_smoke_postgresql_two_workers(pg_url: str) -> None:
    out = run(*SMALL, "--scenarios", "closed,catchup", "--no-vm", "--database", pg_url,
              "--workers", "2").stdout  # fmt: skip
    assert "afmon on PostgreSQL, 2 worker(s)" in out
    assert "ledger check: PASSED" in out


def test_the_check_catches_a_lost_or_doubled_batch() -> None:
    load = load_bench()
    agents = [
        load.make_agent(
            "closed", i, 40, users=3, start=1_790_000_000.0, interval=10.0,
            facility="f", run_id="t",
        )
        for i in range(2)
    ]  # fmt: skip
    for a in agents:
        a.acked = {"afmon": bytearray(b"\x01" * len(a.bodies))}
    sent = load.truth(agents, "afmon", 3)
    day = {r: sent[r] for r in load.RESOURCES}
    assert load.check(sent, dict(sent), day)
    agents[1].acked["afmon"][20] = 0  # one batch in the middle never acknowledged
    fewer = load.truth(agents, "afmon", 3)
    assert not load.check(sent, fewer, day)  # what the ledger would hold had it lost it
    assert not load.check(fewer, sent, day)  # ... or had it counted one twice


def test_ingest_cpu_smoke() -> None:
    """bench/ingest_cpu.py (the per-batch CPU by stage, in one process) runs and prints its
    stages; every batch applied whole (it exits non-zero otherwise)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_cpu.py"), "--agents", "2", "--batches",
         "3", "--users", "3", "--profile"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "4 batches of 21 series" in proc.stdout
    for stage in ("decode", "judge", "apply", "total CPU", "wall", "tottime"):
        assert stage in proc.stdout, proc.stdout
