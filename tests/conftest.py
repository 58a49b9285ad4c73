"""Fixtures that start real things: servers on free ports, PostgreSQL databases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

pytest_plugins = ["tests.signed_server"]  # the `signed_server` fixture (sign-in tests)

PG_ADMIN_URL = os.environ.get(
    "AFMON_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL at 127.0.0.1:5432; fails (never skips) without it."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"afmon_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is needed for this test: {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both ledger backends: every test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/afmon.sqlite"
    return request.getfixturevalue("pg_url")


@dataclass
class ServerProcess:
    url: str
    token: str
    facility: str
    env: dict[str, str]
    log: Path
    args: tuple[str, ...] = ()  # after `afmon serve`, e.g. ("--workers", "2")
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "afmon.aggregator.cli", "serve", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"server not healthy in {timeout} s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def as_root() -> None:
    """Tests that run processes as other uids, drop capabilities or remount need root: they
    fail (never skip) without it, like a missing component. `make test` installs Debian
    packages and runs as root; CI does."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (processes of other uids, capabilities, mounts): "
                    "run `make test` as root, as CI does")  # fmt: skip


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start `afmon serve` as a real process on a free port; stopped at teardown."""
    started: list[ServerProcess] = []

    def make(
        database_url: str | None = None,
        identity_file: Path | None = None,
        facility: str = "test-af",
        workers: int = 1,
        **extra: str,
    ) -> ServerProcess:
        port = free_port()
        token = uuid.uuid4().hex
        env = {
            **os.environ,
            "AFMON_HOST": "127.0.0.1",
            "AFMON_PORT": str(port),
            "AFMON_DATABASE_URL": database_url or f"sqlite:///{tmp_path}/server.sqlite",
            "AFMON_FACILITY_TOKENS": json.dumps({facility: token}),
            "AFMON_LOCAL_MODE": "true",
            "AFMON_LOG_LEVEL": "warning",
            **{f"AFMON_{k.upper()}": v for k, v in extra.items()},
        }
        if identity_file is not None:
            env["AFMON_IDENTITY_FILE"] = str(identity_file)
        server = ServerProcess(
            f"http://127.0.0.1:{port}",
            token,
            facility,
            env,
            tmp_path / f"server-{port}.log",
            ("--workers", str(workers)) if workers > 1 else (),
        )
        server.start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()
