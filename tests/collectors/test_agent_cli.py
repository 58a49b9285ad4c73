"""The `afmon-agent` command, run as a real process against the test ingest server."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from afmon.collectors import wire
from afmon.collectors.settings import AgentSettings

from .ingest_server import IngestServer

REPO = Path(__file__).resolve().parents[2]


def agent(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afmon.collectors.agent", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Measure this test's own account even when it is a system one (root in a container).
MIN_UID = ["--min-uid", str(min(os.getuid(), 1000))]


def run_args(server: IngestServer, spool: Path) -> list[str]:
    return ["--server-url", server.url, "--spool-dir", str(spool), "--node", "wn7", *MIN_UID]


def test_help_names_every_setting_and_its_env_variable() -> None:
    result = agent("--help")
    assert result.returncode == 0, result.stderr
    for field in AgentSettings.model_fields:
        assert f"$AFMON_{field.upper()}" in result.stdout
    for flag in ("--once", "--print", "--server-url", "--spool-dir", "Exit status"):
        assert flag in result.stdout
    assert "rejected" in result.stdout and "SPOOL_DIR/rejected/" in result.stdout
    requeue = agent("rejected", "requeue", "--help")
    assert requeue.returncode == 0, requeue.stderr
    for text in ("--all", "--split N", "SEQ", "original seq", "exactly once"):
        assert text in requeue.stdout
    listing = agent("rejected", "list", "--help")
    assert listing.returncode == 0 and "when it was refused" in listing.stdout


def test_a_second_agent_on_a_spool_in_use_exits_2(tmp_path: Path) -> None:
    from afmon.collectors.spool import Spool

    running = Spool(tmp_path, lock=True)
    assert (tmp_path / "lock").read_text().strip() == str(os.getpid())
    result = agent("--once", "--server-url", "http://127.0.0.1:9", "--spool-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"is in use by another agent (pid {os.getpid()})" in result.stderr
    assert running.pending() == []  # the second one wrote nothing


def test_import_pulls_in_no_server_library() -> None:
    code = (
        "import sys, afmon.collectors.agent; "
        "print([m for m in ('fastapi', 'dash', 'pandas', 'sqlalchemy') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_once_sends_host_metrics_and_exit_status_tracks_the_spool(
    tmp_path: Path, ingest_server: IngestServer
) -> None:
    spool = tmp_path / "spool"
    env = {"AFMON_TOKEN": "tok-1", "AFMON_FACILITY": "env-af"}
    ok = agent("--once", "--facility", "cli-af", *run_args(ingest_server, spool), env=env)
    assert ok.returncode == 0, ok.stderr
    [batch] = ingest_server.batches
    assert (batch.seq, batch.facility, batch.node) == (0, "cli-af", "wn7")  # flag beats env
    me = pwd.getpwuid(os.getuid()).pw_name
    mine = {s.metric: s for s in batch.series if s.labels.get("user") == me}
    assert set(mine) == {
        "user_cpu_seconds",
        "user_memory_rss_bytes",
        "user_io_read_bytes",
        "user_io_write_bytes",
        "user_processes",
    }
    assert mine["user_cpu_seconds"].values[0] > 0 and mine["user_processes"].values[0] >= 1
    assert mine["user_cpu_seconds"].labels == {"user": me, "node": "wn7"}
    node = {s.metric: s.values[0] for s in batch.series if "user" not in s.labels}
    assert node["node_cpu_cores"] == os.cpu_count()
    assert node["node_hepscore23_per_core"] == 10.0
    assert ingest_server.requests[0].headers["Authorization"] == "Bearer tok-1"

    ingest_server.stop()
    down = agent("--once", *run_args(ingest_server, spool), env=env)
    assert down.returncode == 1
    assert "cannot reach" in down.stderr
    assert len(list((spool / "batches").iterdir())) == 1

    ingest_server.start()
    again = agent("--once", *run_args(ingest_server, spool), env=env)
    assert again.returncode == 0, again.stderr
    assert ingest_server.seqs() == [0, 1, 2]
    # the second run saw the first run's state: busy ratio over the time in between
    assert any(s.metric == "node_cpu_busy_ratio" for s in ingest_server.batches[-1].series)

    ingest_server.mode = "422"
    rejected = agent("--once", *run_args(ingest_server, spool), env=env)
    assert rejected.returncode == 3
    assert len(list((spool / "rejected").glob("*.json.gz"))) == 1


def test_print_shows_a_valid_batch_and_writes_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "never-created"
    result = agent("--print", "--node", "wn9", "--spool-dir", str(spool), *MIN_UID)
    assert result.returncode == 0, result.stderr
    batch = wire.decode(result.stdout.encode())
    assert batch.node == "wn9" and batch.seq == 0 and batch.version == wire.WIRE_VERSION
    assert {"user_cpu_seconds", "node_memory_bytes"} <= {s.metric for s in batch.series}
    assert json.loads(result.stdout)["facility"] == "demo-af"
    assert not spool.exists()


def test_bad_settings_exit_2_naming_the_field(tmp_path: Path) -> None:
    result = agent("--once", "--interval", "-1", "--spool-dir", str(tmp_path))
    assert result.returncode == 2
    assert "interval_seconds" in result.stderr and "AFMON_INTERVAL_SECONDS" in result.stderr
    bad_env = agent("--print", env={"AFMON_FACILITY": "has spaces"})
    assert bad_env.returncode == 2 and "facility" in bad_env.stderr
    bad_level = agent("--print", env={"AFMON_LOG_LEVEL": "loud"})
    assert bad_level.returncode == 2
    assert "AFMON_LOG_LEVEL='LOUD' is not one of DEBUG, INFO, WARNING, ERROR" in bad_level.stderr


def test_system_accounts_are_left_out_by_default() -> None:
    def users_and_excluded(*args: str, env: dict[str, str] | None = None) -> tuple[set, float]:
        result = agent("--print", *args, env=env)
        assert result.returncode == 0, result.stderr
        series = wire.decode(result.stdout.encode()).series
        users = {s.labels["user"] for s in series if "user" in s.labels}
        [excluded] = [s.values[0] for s in series if s.metric == "agent_excluded_processes"]
        return users, excluded

    users, excluded = users_and_excluded(env={"AFMON_MIN_UID": "1000"})
    assert "root" not in users and excluded >= 1  # this test runs as someone: root here or not
    everyone, none = users_and_excluded("--min-uid", "0")
    assert "root" in everyone and none == 0
    named, excluded = users_and_excluded("--min-uid", "0", env={"AFMON_EXCLUDE_USERS": '["root"]'})
    assert "root" not in named and excluded >= 1
    flag, _ = users_and_excluded("--min-uid", "0", "--exclude-users", '["root"]')
    assert "root" not in flag


def test_bad_exclusion_settings_exit_2_naming_them() -> None:
    bad_json = agent("--print", env={"AFMON_EXCLUDE_USERS": "[root"})
    assert bad_json.returncode == 2 and "Traceback" not in bad_json.stderr
    assert "AFMON_EXCLUDE_USERS" in bad_json.stderr and "not valid JSON" in bad_json.stderr
    negative = agent("--print", "--min-uid", "-1")
    assert negative.returncode == 2 and "AFMON_MIN_UID" in negative.stderr


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("AFMON_"):
            monkeypatch.delenv(key)
    s = AgentSettings()
    assert s.server_url == "http://127.0.0.1:8600" and s.facility == "demo-af"
    assert s.interval_seconds == 15 and s.spool_max_bytes == 64 * 2**20
    assert s.hepscore23_per_core == 10.0 and s.token is None
    assert s.min_uid == 1000 and s.exclude_users == []
    assert s.spool_dir == (
        Path("/var/lib/afmon-agent")
        if os.geteuid() == 0
        else Path.home() / ".local/state/afmon-agent"
    )
    monkeypatch.setenv("AFMON_INTERVAL_SECONDS", "2.5")
    monkeypatch.setenv("AFMON_TOKEN", "t0k")
    s = AgentSettings()
    assert s.interval_seconds == 2.5
    assert s.token is not None and s.token.get_secret_value() == "t0k"
    assert "t0k" not in repr(s)


def test_sigterm_stops_cleanly_after_flushing(tmp_path: Path, ingest_server: IngestServer) -> None:
    spool = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-m", "afmon.collectors.agent", "--interval", "0.2"]
        + run_args(ingest_server, spool),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "AFMON_TOKEN": "tok"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while len(ingest_server.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ingest_server.batches) >= 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping" in err
    assert list((spool / "batches").iterdir()) == []
    seqs = ingest_server.seqs()
    assert seqs == list(range(len(seqs)))
