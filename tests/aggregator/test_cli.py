"""`afmon serve` refuses bad settings with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AFMON_PORT": "eighty"}, "bad setting AFMON_PORT: Input should be a valid integer"),
        ({"AFMON_RETENTION_DAYS": "-1"}, "bad setting AFMON_RETENTION_DAYS"),
        ({"AFMON_FACILITY_TOKENS": "{not json"}, "facility_tokens"),
        ({"AFMON_TSDB_RAW_ONLY": "true"}, "bad settings: AFMON_TSDB_RAW_ONLY needs AFMON_TSDB_URL"),
    ],
)
def test_serve_names_the_bad_setting(env: dict[str, str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "serve"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert message in r.stderr


def test_serve_names_a_broken_identity_file(tmp_path) -> None:
    bad = tmp_path / "identity.toml"
    bad.write_text("[vos.atlas]\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "afmon.aggregator.cli",
            "serve",
            "--identity-file",
            str(bad),
            "--database-url",
            f"sqlite:///{tmp_path}/x.sqlite",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AFMON_DASHBOARD": "false"},
    )
    assert r.returncode != 0
    assert "identity map" in r.stderr and "vos.atlas.issuer: Field required" in r.stderr


def test_serve_refuses_weak_agent_tokens_outside_local_mode(tmp_path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "afmon.aggregator.cli",
            "serve",
            "--database-url",
            f"sqlite:///{tmp_path}/x.sqlite",
        ],
        env={
            **os.environ,
            "AFMON_FACILITY_TOKENS": '{"af": "changeme"}',
            "AFMON_LOCAL_MODE": "false",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "refusing to start: the AFMON_FACILITY_TOKENS token of 'af' has 8 characters" in r.stderr


def test_agent_token_commands(tmp_path) -> None:
    db = ["--database-url", f"sqlite:///{tmp_path}/t.sqlite"]

    def afmon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "afmon.aggregator.cli", "agent-token", *db, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = afmon("create", "node-1", "--facility", "af")
    assert created.returncode == 0 and created.stdout.startswith("afm_")
    assert "shown only now" in created.stderr
    assert afmon("create", "node-1", "--facility", "af").returncode == 1
    assert afmon("revoke", "node-1").returncode == 0
    assert afmon("list").stdout == "node-1\taf\trevoked\n"
    missing = afmon("revoke", "nope")
    assert missing.returncode == 1 and "no agent token named 'nope'" in missing.stderr
