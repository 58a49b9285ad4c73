"""docs/operations.md's backup and restore commands, run as written: a server filled by the
simulator is backed up while it runs (SQLite: `sqlite3 .backup`; PostgreSQL: `pg_dump
--format=custom`), restored into a fresh database (a copy of the file; `createdb` +
`pg_restore`), and a server started on the restored database answers the same ledger, to the
last digit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from afmon.collectors.simulator import FacilitySimulator, Poster, backfill
from tests.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
END = 1_790_006_400.0  # a whole UTC hour
HOURS = 4


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed for the backup test: install Debian's `{package}`")
    return found


def documented(command: str) -> str:
    """The line of docs/operations.md that runs `command`, so the test runs what the doc says."""
    lines = [ln.strip() for ln in OPERATIONS.read_text().splitlines()]
    found = [ln for ln in lines if ln.startswith(command + " ")]
    assert found, f"docs/operations.md shows no `{command} ...` line"
    return found[0].split("  #", 1)[0].strip()


def fill(server: ServerProcess) -> None:
    sim = FacilitySimulator(
        facility=server.facility, nodes=2, members_per_vo=2, seed=7, sessions_per_member_day=6
    )
    with httpx.Client(timeout=60) as client:
        backfill(sim, Poster(server.url, server.token, client), END - HOURS * 3600, END,
                 report=None)


def ledger(server: ServerProcess) -> list[dict[str, Any]]:
    """Every member's totals per resource, in a fixed order."""
    r = httpx.get(f"{server.url}/api/v1/usage",
                  params={"start": 0, "end": END + 86400, "by": "member"}, timeout=60)
    assert r.status_code == 200, r.text
    rows = r.json()
    assert rows, "the simulator filled nothing"
    return sorted(rows, key=lambda row: sorted((k, str(v)) for k, v in row.items()))


def identity(tmp_path: Path) -> Path:
    sim = FacilitySimulator(facility="test-af", nodes=2, members_per_vo=2, seed=7)
    path = tmp_path / "identity.toml"
    path.write_text(sim.identity_toml())
    return path


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}: {done.stderr}"


def test_sqlite_online_backup_restores_the_same_ledger(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    live = tmp_path / "live" / "afmon.sqlite"
    live.parent.mkdir()
    server = server_factory(database_url=f"sqlite:///{live}", identity_file=identity(tmp_path),
                            dashboard="false")
    fill(server)
    before = ledger(server)
    assert Path(f"{live}-wal").exists()  # a WAL database: a file copy would miss these pages
    # The documented command, against the running server's database.
    line = documented("sqlite3")
    backup = tmp_path / "backup.sqlite"
    line = line.replace("/var/lib/afmon/afmon.sqlite", str(live))
    line = line.replace("/srv/backup/afmon.sqlite", str(backup))
    run(["bash", "-c", line])
    assert ledger(server) == before  # the server kept running and serving
    check = subprocess.run([tool("sqlite3", "sqlite3"), str(backup), "PRAGMA integrity_check"],
                           capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "ok"
    # Restore: the backup is a complete database file (no -wal to go with it).
    restored = tmp_path / "restored" / "afmon.sqlite"
    restored.parent.mkdir()
    shutil.copyfile(backup, restored)
    again = server_factory(database_url=f"sqlite:///{restored}", dashboard="false")
    assert ledger(again) == before


def test_postgres_dump_restores_the_same_ledger(
    pg_url: str, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(database_url=pg_url, identity_file=identity(tmp_path),
                            dashboard="false")
    fill(server)
    before = ledger(server)
    source = make_url(pg_url)
    libpq = f"postgresql://{source.username}@{source.host}:{source.port or 5432}"
    dump = tmp_path / "afmon.dump"
    target = f"afmon_restore_{uuid.uuid4().hex[:12]}"
    commands = [
        documented("pg_dump")
        .replace("postgresql://afmon@db.example.org/afmon", f"{libpq}/{source.database}")
        .replace("/srv/backup/afmon.dump", str(dump)),
        documented("createdb")
        .replace("-h db.example.org -U postgres", f"-h {source.host} -U {source.username}")
        .replace("-O afmon ", "")  # the test's databases belong to postgres
        .replace("afmon_restored", target),
        documented("pg_restore")
        .replace("postgresql://afmon@db.example.org/afmon_restored", f"{libpq}/{target}")
        .replace("/srv/backup/afmon.dump", str(dump)),
    ]
    tool("pg_dump", "postgresql-client")
    try:
        for line in commands:
            run(["bash", "-c", line])  # while the original server runs
        assert ledger(server) == before
        url = f"postgresql+psycopg://{source.username}@{source.host}:{source.port or 5432}/{target}"
        for command in ("afmon db upgrade", "afmon db current"):  # the upgrade's step 3
            done = subprocess.run(
                ["bash", "-c", documented(command)], capture_output=True, text=True,
                timeout=300,
                env={**os.environ, "AFMON_DATABASE_URL": url,
                     "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
            )
            assert done.returncode == 0, done.stderr
        again = server_factory(database_url=url, dashboard="false")
        assert ledger(again) == before
        again.stop()
    finally:
        run(["psql", f"{libpq}/postgres", "-c", f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)'])

