"""The `afmon` commands: their version, bad settings named by variable (exit 2; serve's start-up
cases are in test_startup_errors.py), the identity file, weak tokens, agent tokens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from afmon.aggregator import __version__


@pytest.mark.parametrize(
    "command", [["-m", "afmon.aggregator.cli"], ["-m", "afmon.collectors.agent"]]
)
def test_version(command: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, *command, "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"afmon {__version__}\n"


def test_the_version_is_the_distributions() -> None:
    from importlib.metadata import version

    assert __version__ == version("afmon")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"AFMON_PORT": "eighty"},
            "bad setting AFMON_PORT=eighty: Input should be a valid integer",
        ),
        ({"AFMON_RETENTION_DAYS": "-1"}, "bad setting AFMON_RETENTION_DAYS=-1: must be positive"),
        (
            {"AFMON_FACILITY_TOKENS": "{not json"},
            "bad setting AFMON_FACILITY_TOKENS='{not json': not valid",
        ),
        ({"AFMON_TSDB_RAW_ONLY": "true"}, "bad settings: AFMON_TSDB_RAW_ONLY needs AFMON_TSDB_URL"),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["db", "current"], ["agent-token", "list"]])
def test_commands_name_the_bad_setting(
    env: dict[str, str], message: str, command: list[str]
) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", *command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.startswith(f"afmon: {message}")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_db_commands_refuse_a_sqlite_file_in_a_missing_directory(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/missing/x.sqlite"
    for command in (["db", "upgrade"], ["agent-token", "list"]):
        r = subprocess.run(
            [sys.executable, "-m", "afmon.aggregator.cli", command[0], "--database-url", url]
            + command[1:],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2
        assert f"{tmp_path}/missing does not exist" in r.stderr
    assert not (tmp_path / "missing").exists()


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
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith(f"afmon: bad setting AFMON_IDENTITY_FILE={bad} (from --identity-file)")
    assert "identity map" in line and "vos.atlas.issuer: Field required" in line


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
    assert r.returncode == 2
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
