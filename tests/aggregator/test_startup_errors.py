"""`afmon serve` started by a stranger: every bad setting stops it with exit status 2 and one
line on stderr naming the variable, its value (secrets masked) and what to do; no traceback
unless the log level is debug. A good start says what runs, and migrates the schema."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from afmon.aggregator import __version__
from tests.aggregator.test_migrations import HEAD  # the newest migration
from tests.conftest import PG_ADMIN_URL, free_port

PG = make_url(PG_ADMIN_URL)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Like conftest's server_factory, with no AFMON_ variable of this shell leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AFMON_")}
    env.update(
        {
            "AFMON_HOST": "127.0.0.1",
            "AFMON_PORT": str(free_port()),
            "AFMON_DATABASE_URL": f"sqlite:///{tmp_path}/server.sqlite",
            "AFMON_FACILITY_TOKENS": json.dumps({"test-af": uuid.uuid4().hex}),
            "AFMON_LOCAL_MODE": "true",
            "AFMON_LOG_LEVEL": "warning",
            "AFMON_DASHBOARD": "false",
        }
    )
    env.update(extra)
    return env


def serve(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "serve", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def pg(**parts: str | int) -> str:
    return PG.set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


# (id, environment, flags, what the one line says, what it must not say)
CASES = [
    pytest.param(
        {"AFMON_DATABASE_URL": pg(port=1)},
        [],
        [f"AFMON_DATABASE_URL={pg(port=1)}", "connection refused", "is PostgreSQL running"],
        [],
        id="postgres-unreachable",
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": pg(port=1, password="hunter2")},
        [],
        ["AFMON_DATABASE_URL=", ":***@127.0.0.1:1/", "connection refused"],
        ["hunter2"],
        id="postgres-password-masked",
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": pg(username="nosuchrole")},
        [],
        ["AFMON_DATABASE_URL=", "no role nosuchrole", "createuser nosuchrole"],
        [],
        id="postgres-no-such-role",
        marks=pytest.mark.postgres,
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": pg(database="afmon_no_such_db")},
        [],
        ["AFMON_DATABASE_URL=", "no database afmon_no_such_db", "createdb"],
        [],
        id="postgres-no-such-database",
        marks=pytest.mark.postgres,
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": "afmon.sqlite"},
        [],
        ["AFMON_DATABASE_URL=afmon.sqlite: not a database URL", "write sqlite:///afmon.sqlite"],
        [],
        id="no-scheme",
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": "mysql://x/y"},
        [],
        [
            "AFMON_DATABASE_URL=mysql://x/y",
            "does not support mysql",
            "SQLite (sqlite:///",
            "postgresql+psycopg://",
        ],
        [],
        id="unsupported-scheme",
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": "sqlite:///{tmp}/missing/afmon.sqlite"},
        [],
        [
            "AFMON_DATABASE_URL=sqlite:///",
            "missing does not exist",
            "mkdir -p",
            "never directories",
        ],
        [],
        id="sqlite-missing-directory",
    ),
    pytest.param(
        {"AFMON_DATABASE_URL": "sqlite://"},
        [],
        ["AFMON_DATABASE_URL=sqlite://", "in-memory"],
        [],
        id="sqlite-in-memory",
    ),
    pytest.param(
        {},
        ["--port", "99999"],
        ["AFMON_PORT=99999 (from --port): not a TCP port", "1 to 65535"],
        [],
        id="port-flag-out-of-range",
    ),
    pytest.param(
        {"AFMON_PORT": "0"}, [], ["AFMON_PORT=0: port 0", "1 to 65535"], [], id="port-zero"
    ),
    pytest.param(
        {"AFMON_PORT": "70000"},
        [],
        ["AFMON_PORT=70000: not a TCP port"],
        [],
        id="port-env-out-of-range",
    ),
    pytest.param(
        {"AFMON_PORT": "{busy}"},
        [],
        ["AFMON_PORT={busy}: cannot listen on 127.0.0.1:{busy}", "already in use", "--port"],
        [],
        id="port-in-use",
    ),
    pytest.param(
        {"AFMON_PORT": "eighty"},
        [],
        ["AFMON_PORT=eighty: Input should be a valid integer"],
        [],
        id="port-not-a-number",
    ),
    pytest.param(
        {"AFMON_HOST": "10.255.255.254"},
        [],
        ["AFMON_HOST=10.255.255.254: not an address of this machine", "0.0.0.0"],
        [],
        id="host-not-here",
    ),
    pytest.param(
        {"AFMON_FACILITY_TOKENS": "{bad"},
        [],
        ["AFMON_FACILITY_TOKENS='{bad': not valid JSON", 'must be JSON like {"my-af": '],
        [],
        id="json-malformed",
    ),
    pytest.param(
        {"AFMON_FACILITY_TOKENS": '{"af": "hunter2hunter2hunter2"'},
        [],
        ["AFMON_FACILITY_TOKENS=", '"***"', "not valid JSON"],
        ["hunter2"],
        id="json-malformed-token-masked",
    ),
    pytest.param(
        {"AFMON_FACILITY_TOKENS": '{"af": 5}'},
        [],
        ['AFMON_FACILITY_TOKENS["af"] = ***: Input should be a valid string'],
        [],
        id="json-wrong-type-masked",
    ),
    pytest.param(
        {"AFMON_RETENTION_DAYS": "-1"},
        [],
        ["bad setting AFMON_RETENTION_DAYS=-1: must be positive"],
        [],
        id="validation",
    ),
    pytest.param(
        {"AFMON_GPU_MODEL_FACTORS": '{"h100": "fast"}'},
        [],
        ['AFMON_GPU_MODEL_FACTORS["h100"] = fast: Input should be a valid number'],
        [],
        id="validation-inside-json",
    ),
    pytest.param(
        {"AFMON_TSDB_RAW_ONLY": "true"},
        [],
        ["bad settings: AFMON_TSDB_RAW_ONLY needs AFMON_TSDB_URL"],
        [],
        id="validation-across-settings",
    ),
    pytest.param(
        {"AFMON_LOG_LEVEL": "loud"},
        [],
        ["AFMON_LOG_LEVEL=loud: not a log level", "debug, info"],
        [],
        id="log-level",
    ),
    pytest.param(
        {"AFMON_IDENTITY_FILE": "{tmp}/nope.toml"},
        [],
        ["AFMON_IDENTITY_FILE=", "nope.toml: no such file"],
        [],
        id="identity-file-missing",
    ),
    pytest.param(
        {"AFMON_LOCAL_MODE": "false", "AFMON_FACILITY_TOKENS": '{"af": "changeme"}'},
        [],
        ["refusing to start: the AFMON_FACILITY_TOKENS token of 'af' has 8 characters"],
        ["changeme"],
        id="weak-token",
    ),
]


@pytest.mark.parametrize(("env", "flags", "says", "hides"), CASES)
def test_a_bad_setting_stops_serve_with_one_line(
    tmp_path: Path,
    busy_port: int,
    env: dict[str, str],
    flags: list[str],
    says: list[str],
    hides: list[str],
) -> None:
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{busy}", str(busy_port))

    r = serve(clean_env(tmp_path, **{k: fill(v) for k, v in env.items()}), *flags, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    [line] = lines
    assert line.startswith("afmon: ")
    for text in says:
        assert fill(text) in line
    for text in hides:
        assert text not in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "missing").exists()  # no directory made behind the operator's back


def test_several_problems_give_one_line_each(tmp_path: Path) -> None:
    r = serve(clean_env(tmp_path, AFMON_PORT="eighty", AFMON_RETENTION_DAYS="-1"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith("afmon: bad setting AFMON_PORT=eighty: ")
    assert lines[1].startswith("afmon: bad setting AFMON_RETENTION_DAYS=-1: ")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_too(tmp_path: Path, how: str) -> None:
    env = clean_env(tmp_path, AFMON_DATABASE_URL=pg(port=1))
    flags = ["--log-level", "debug"] if how == "flag" else []
    if how == "env":
        env["AFMON_LOG_LEVEL"] = "debug"
    r = serve(env, *flags)
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "OperationalError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("afmon: cannot use the database ")


def test_a_schema_newer_than_this_afmon_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/server.sqlite"
    db = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "db", "--database-url", url, "upgrade"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert db.returncode == 0, db.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "server.sqlite") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    r = serve(clean_env(tmp_path))
    assert r.returncode == 2
    [line] = r.stderr.strip().splitlines()
    assert "schema revision 9999, which afmon" in line and f"newest is {HEAD}" in line


# -- a good start ------------------------------------------------------------------------


def start_and_stop(env: dict[str, str], log: Path) -> str:
    """Run `afmon serve` until it answers /healthz, stop it, return what it logged."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "afmon.aggregator.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                url = f"http://127.0.0.1:{env['AFMON_PORT']}/healthz"
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"not healthy: {log.read_text()}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return log.read_text()


def test_start_up_log_says_what_runs_and_warns_without_agents_or_readers(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path, AFMON_LOG_LEVEL="info", AFMON_FACILITY_TOKENS="{}", AFMON_LOCAL_MODE="false"
    )
    text = start_and_stop(env, tmp_path / "serve.log")
    assert f"afmon {__version__} starting" in text
    assert f"database: sqlite:///{tmp_path}/server.sqlite; schema migrated empty -> {HEAD}" in text
    assert f"listening on http://127.0.0.1:{env['AFMON_PORT']}" in text
    assert "WARNING afmon.serve: no agent can deliver data: AFMON_FACILITY_TOKENS is empty" in text
    assert "afmon agent-token create" in text
    assert "WARNING afmon.serve: no reader can sign in" in text
    assert "Traceback" not in text


def test_start_counts_agent_tokens_and_migrates_an_older_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/server.sqlite"

    def afmon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "afmon.aggregator.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert afmon("db", "--database-url", url, "upgrade", "0003").returncode == 0
    assert afmon("agent-token", "--database-url", url, "create", "n1", "--facility", "af").stdout
    env = clean_env(tmp_path, AFMON_LOG_LEVEL="info", AFMON_FACILITY_TOKENS="{}")
    text = start_and_stop(env, tmp_path / "serve.log")
    assert f"schema migrated 0003 -> {HEAD}" in text
    assert "agents can deliver data with agent tokens in the database: 1 for af" in text
    assert "no agent can deliver data" not in text
    assert afmon("db", "--database-url", url, "current").stdout.strip() == HEAD
    again = start_and_stop(env, tmp_path / "again.log")
    assert f"schema at {HEAD}" in again


@pytest.mark.postgres
def test_start_up_log_masks_the_database_password(tmp_path: Path, pg_url: str) -> None:
    with_password = make_url(pg_url).set(password="hunter2")  # trust auth: any password
    env = clean_env(
        tmp_path,
        AFMON_LOG_LEVEL="info",
        AFMON_DATABASE_URL=with_password.render_as_string(hide_password=False),
    )
    text = start_and_stop(env, tmp_path / "serve.log")
    assert "hunter2" not in text
    assert f":***@{PG.host}" in text and f"schema migrated empty -> {HEAD}" in text
    assert "agents can deliver data with AFMON_FACILITY_TOKENS for test-af" in text
