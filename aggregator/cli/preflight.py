"""What `afmon serve` checks before it serves: the log level, the listen address and port,
the database URL, that the database answers, and its schema (migrated to this version's).

Each problem is one `StartupError` whose text is the line the operator reads: the setting and
its value (secrets masked), what is wrong and what to do. A stranger's first start should
fail with that sentence, not with a driver's traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from afmon.aggregator import __version__

log = logging.getLogger("afmon.serve")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
CONNECT_TIMEOUT_SECONDS = 10
SUPPORTED_DATABASES = (
    "SQLite (sqlite:///afmon.sqlite, relative to the working directory, or "
    "sqlite:////var/lib/afmon/afmon.sqlite) and PostgreSQL "
    "(postgresql+psycopg://USER:PASSWORD@HOST:5432/DBNAME)"
)
# Any 64-bit number, the same in every afmon: servers starting together migrate one at a time.
MIGRATION_LOCK = 0x6166_6D6F_6E_6D6967  # "afmon" "mig"

# A setting as the operator knows it, e.g. `AFMON_PORT=99999 (from --port)`.
Named = Callable[[str, object], str]


class StartupError(Exception):
    """One line for the operator: `afmon serve` stops with exit status 2."""


def check_log_level(level: str, named: Named) -> None:
    if level.lower() not in LOG_LEVELS:
        raise StartupError(
            f"bad setting {named('log_level', level)}: not a log level; use one of "
            f"{', '.join(LOG_LEVELS)} (--log-level or AFMON_LOG_LEVEL)"
        )


def check_port(port: int, named: Named) -> None:
    if port == 0:
        raise StartupError(
            f"bad setting {named('port', port)}: port 0 would let the system pick a random "
            "port that no agent or browser knows; choose one from 1 to 65535 with --port or "
            "AFMON_PORT (default 8600)"
        )
    if not 1 <= port <= 65535:
        raise StartupError(
            f"bad setting {named('port', port)}: not a TCP port; choose one from 1 to 65535 "
            "with --port or AFMON_PORT (default 8600)"
        )


def check_listen(host: str, port: int, named: Named) -> None:
    """That the address is this machine's and the port is free: bind once, then let go
    (uvicorn binds for good, with SO_REUSEADDR as here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as exc:
        raise StartupError(
            f"bad setting {named('host', host)}: no such address ({exc.strerror}); listen on "
            "127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of this "
            "machine's addresses (--host or AFMON_HOST)"
        ) from exc
    except OSError as exc:
        where = f"{host}:{port}" if family == socket.AF_INET else f"[{host}]:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"{named('port', port)}: cannot listen on {where}, the port is already in use "
                "by another program (another afmon?); choose another port with --port or "
                f"AFMON_PORT, or stop that program (`ss -ltnp 'sport = :{port}'` names it)"
            ) from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(
                f"bad setting {named('host', host)}: not an address of this machine; listen on "
                "127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of its "
                "addresses (--host or AFMON_HOST)"
            ) from exc
        if exc.errno == errno.EACCES:
            raise StartupError(
                f"{named('port', port)}: cannot listen on {where}, ports below 1024 need root "
                "(or CAP_NET_BIND_SERVICE); choose one above 1023 with --port or AFMON_PORT "
                "(default 8600) and put a proxy in front"
            ) from exc
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    finally:
        sock.close()


def _path_hint(value: str) -> str:
    if value.endswith((".sqlite", ".sqlite3", ".db")) or "/" in value:
        # sqlite:/// + a relative path, or + /an/absolute one (four slashes)
        return f"for an SQLite file write sqlite:///{value}; afmon supports {SUPPORTED_DATABASES}"
    return f"afmon supports {SUPPORTED_DATABASES}"


def check_database_url(url: str, named: Named) -> URL:
    """A URL afmon can use: SQLite through the standard library, PostgreSQL through psycopg
    3, and for SQLite a file in a directory that exists (afmon makes no directories: a typo
    in the path should not leave an empty database somewhere unexpected)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StartupError(
            f"bad setting {named('database_url', url)}: not a database URL; {_path_hint(url)}"
        ) from exc
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in ("sqlite", "postgresql"):
        raise StartupError(
            f"bad setting {named('database_url', url)}: afmon does not support {backend} "
            f"databases; it supports {SUPPORTED_DATABASES}"
        )
    if backend == "postgresql" and driver != "psycopg":
        fixed = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=True)
        raise StartupError(
            f"bad setting {named('database_url', url)}: afmon talks to PostgreSQL through "
            f"psycopg 3, not {driver}; write {fixed}"
        )
    if backend == "sqlite":
        if driver != "pysqlite":
            raise StartupError(
                f"bad setting {named('database_url', url)}: afmon opens SQLite through "
                f"Python's sqlite3, not {driver}; write sqlite:///PATH"
            )
        _check_sqlite_path(parsed.database, url, named)
    return parsed


def _check_sqlite_path(database: str | None, url: str, named: Named) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        raise StartupError(
            f"bad setting {named('database_url', url)}: an in-memory database is lost at exit "
            "and not shared between connections; give a file, e.g. sqlite:///afmon.sqlite"
        )
    path = Path(database).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    parent = path.parent
    if path.is_dir():
        raise StartupError(
            f"bad setting {named('database_url', url)}: {path} is a directory; name the "
            f"database file in it, e.g. sqlite:///{path / 'afmon.sqlite'}"
        )
    if not parent.is_dir():
        raise StartupError(
            f"bad setting {named('database_url', url)}: the directory {parent} does not "
            f"exist; create it (mkdir -p {parent}) or choose a file in an existing directory "
            "(afmon creates the file, never directories)"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(
            f"bad setting {named('database_url', url)}: cannot write in {parent} (SQLite "
            "keeps its -wal and -shm files next to the database); give this user write "
            "access to it or choose another directory"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(
            f"bad setting {named('database_url', url)}: cannot read and write {path}; give "
            "this user access to it"
        )


_REASONS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r'role "([^"]+)" does not exist'),
        "PostgreSQL has no role {0}; create it (`createuser {0}`, or CREATE ROLE {0} LOGIN) "
        "or put an existing user in the URL",
    ),
    (
        re.compile(r'database "([^"]+)" does not exist'),
        "PostgreSQL has no database {0}; create it (`createdb -O {user} {0}`) or name an "
        "existing one in the URL",
    ),
    (
        re.compile(r'password authentication failed for user "([^"]+)"'),
        "PostgreSQL refused the password of user {0}; correct it in the URL",
    ),
    (
        re.compile(r"no password supplied|fe_sendauth"),
        "PostgreSQL wants a password for user {user}; put it in the URL "
        "(postgresql+psycopg://{user}:PASSWORD@HOST/DB)",
    ),
    (
        re.compile(r"no pg_hba\.conf entry"),
        "PostgreSQL's pg_hba.conf lets no connection of user {user} from this host in; add "
        "a line for it there and reload PostgreSQL",
    ),
    (
        re.compile(r"Connection refused"),
        "nothing accepts connections at {host}:{port} (connection refused); is PostgreSQL "
        "running there, and are host and port right?",
    ),
    (
        re.compile(r"timeout expired|timed out"),
        "no answer from {host}:{port} within " + str(CONNECT_TIMEOUT_SECONDS) + " s; check "
        "host, port and firewalls",
    ),
    (
        re.compile(r"resolve host|could not translate host name|Name or service not known"),
        "cannot resolve the host name {host}; correct it in the URL",
    ),
    (
        re.compile(r"permission denied for (schema|database) (\S+)"),
        "user {user} may not create tables in {1} {2}; make it the owner (ALTER DATABASE "
        "... OWNER TO {user}) or grant CREATE",
    ),
    (re.compile(r"file is not a database"), "{path} is not an SQLite database"),
    (re.compile(r"unable to open database file"), "cannot open {path}"),
    (re.compile(r"readonly database"), "{path} is read-only for this user"),
]


def database_problem(exc: BaseException, url: URL) -> str:
    """The driver's error as a sentence with what to do."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig)
    fields = {
        "user": url.username or os.environ.get("USER", "postgres"),
        "host": url.host or "localhost",
        "port": url.port or 5432,
        "path": url.database,
    }
    for pattern, template in _REASONS:
        found = pattern.search(message)
        if found:
            return template.format(*found.groups(), **fields)
    first = next((line.strip() for line in message.splitlines() if line.strip()), repr(orig))
    return first.removeprefix("connection failed: ")


def check_database(url: URL, named: Named) -> None:
    """Connect once, with a timeout, and read something: a wrong host, role, database or
    file is found here rather than deep inside the app's start."""
    sqlite = url.get_backend_name() == "sqlite"
    args = {} if sqlite else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    engine = create_engine(url, poolclass=NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            if sqlite:
                conn.execute(text("SELECT count(*) FROM sqlite_master"))  # reads the header
            else:
                conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        shown = named("database_url", url.render_as_string(hide_password=False))
        raise StartupError(
            f"cannot use the database {shown}: {database_problem(exc, url)}"
        ) from exc
    finally:
        engine.dispose()


def migrate_schema(url: URL, named: Named) -> tuple[str | None, str | None]:
    """Bring the schema to this version's (the migrations of `afmon db upgrade`); return
    (revision before, revision after). On PostgreSQL an advisory lock makes servers that
    start together migrate one after the other (the lock goes with the connection)."""
    from alembic.script import ScriptDirectory

    from afmon.aggregator.store import migrate

    raw = url.render_as_string(hide_password=False)
    shown = named("database_url", raw)
    script = ScriptDirectory.from_config(migrate.alembic_config(raw))
    known = {rev.revision for rev in script.walk_revisions()}
    head = script.get_current_head()
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            current = migrate.current_revision(engine)
            if current is not None and current not in known:
                raise StartupError(
                    f"the database {shown} is at schema revision {current}, which afmon "
                    f"{__version__} does not know (its newest is {head}): a newer afmon has "
                    "migrated it; run that version, or restore a backup from before the upgrade"
                )
            try:
                return migrate.upgrade(raw)
            except Exception as exc:  # noqa: BLE001 - any failure: one line, the cause chained
                raise StartupError(
                    f"cannot migrate the database {shown} to schema {head}: "
                    f"{database_problem(exc, url)}; fix that, then start again (or run "
                    "`afmon db upgrade` to see the migration alone)"
                ) from exc
    finally:
        engine.dispose()
