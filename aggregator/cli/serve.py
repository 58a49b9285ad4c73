"""`afmon serve`: the aggregator (ingest API, read API, /metrics, dashboard).

Start-up goes in order: settings, the checks that need nothing opened (log level, port,
secrets, database URL), the listen address, the database (it must answer), its schema
(migrated to this version's, as `afmon db upgrade` does), the app, then a few lines saying
what runs. A problem up to the app stops the server with exit status 2 and one line naming
the setting (preflight.py); the traceback only with --log-level debug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from afmon.aggregator.cli import preflight
from afmon.aggregator.cli.common import (
    EPILOG,
    EXIT_BAD_SETTING,
    flag_overrides,
    settings_from_args,
)
from afmon.aggregator.cli.preflight import LOG_LEVELS, StartupError
from afmon.aggregator.cli.settings_errors import env_value, setting
from afmon.aggregator.core.settings import ServerSettings

EXIT_FAILED = 1  # something else went wrong while starting: not a setting's fault we know of


def _wants_traceback(args: argparse.Namespace) -> bool:
    level = getattr(args, "log_level", None) or env_value("log_level") or ""
    return level.lower() == "debug"


def cmd_serve(args: argparse.Namespace) -> int:
    debug = _wants_traceback(args)
    try:
        started = _start(args)
    except StartupError as exc:
        if debug:
            traceback.print_exception(exc)
        print(f"afmon: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTING
    except Exception as exc:  # noqa: BLE001 - a stranger gets a sentence, debug the traceback
        if debug:
            traceback.print_exception(exc)
        first = next(iter(str(exc).strip().splitlines()), "")
        hint = "" if debug else " (run with --log-level debug for the traceback)"
        print(f"afmon: cannot start: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
        return EXIT_FAILED
    return _run(args, *started)


def _start(args: argparse.Namespace) -> tuple[ServerSettings, object, int]:
    """Everything up to a running app: (settings, app, workers)."""
    from afmon.aggregator.cli.startup import log_startup
    from afmon.aggregator.identity.accounts import IdentityError

    settings = settings_from_args(args)
    flags = flag_overrides(args)

    def named(field: str, value: object) -> str:
        return setting(ServerSettings, field, value, flags)

    preflight.check_log_level(settings.log_level, named)
    preflight.check_port(settings.port, named)
    weak = weak_secrets(settings)
    if weak:
        raise StartupError("refusing to start: " + "; ".join(weak))
    workers = getattr(args, "workers", None) or 1
    if workers < 1:
        raise StartupError(f"bad setting --workers {workers}: give 1 or more")
    url = preflight.check_database_url(settings.database_url, named)
    if workers > 1 and url.get_backend_name() == "sqlite":
        raise StartupError(
            f"--workers needs PostgreSQL, and {named('database_url', settings.database_url)} "
            "is SQLite; run one worker, or set "
            "AFMON_DATABASE_URL=postgresql+psycopg://USER@HOST/DBNAME"
        )
    if settings.identity_file is not None and not settings.identity_file.is_file():
        raise StartupError(
            f"bad setting {named('identity_file', str(settings.identity_file))}: no such file; "
            "give the identity map's path (docs/identity.md), or leave it unset to keep the "
            "map last loaded into the database"
        )
    preflight.check_listen(settings.host, settings.port, named)
    preflight.check_database(url, named)
    schema = preflight.migrate_schema(url, named)

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from afmon.aggregator.web.app import create_app

    try:
        app = create_app(settings)  # with workers: checks the identity map and schema once
    except IdentityError as exc:
        where = named("identity_file", str(settings.identity_file))
        problem = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise StartupError(
            f"bad setting {where}: identity map: {problem} (`afmon identity check FILE` "
            "checks it alone)"
        ) from exc
    log_startup(settings, url, app.state.services.engine, schema, workers)
    return settings, app, workers


def _run(args: argparse.Namespace, settings: ServerSettings, app: object, workers: int) -> int:
    import uvicorn

    if workers > 1:  # docs/scale.md
        for name in ("host", "port", "database_url", "identity_file", "log_level"):
            if getattr(args, name, None) is not None:  # the workers read the environment
                os.environ[f"AFMON_{name.upper()}"] = str(getattr(args, name))
        app.state.services.engine.dispose()  # type: ignore[attr-defined]
        uvicorn.run(
            "afmon.aggregator.cli.serve:worker_app",
            factory=True,
            workers=workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
        )
        return 0
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )
    return 0


def worker_app() -> object:
    """One worker of `afmon serve --workers N` (settings from the environment)."""
    from afmon.aggregator.web.app import create_app

    settings = ServerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app(settings)


MIN_TOKEN_CHARS = 24


def weak_secrets(settings: ServerSettings) -> list[str]:
    """Secrets too weak for a real deployment (local demo mode accepts them)."""
    if settings.local_mode:
        return []
    weak = [
        f"the AFMON_FACILITY_TOKENS token of {facility!r} has {len(token)} characters; use at "
        f"least {MIN_TOKEN_CHARS} random ones, or per-agent tokens (`afmon agent-token create`)"
        for facility, token in sorted(settings.facility_tokens.items())
        if len(token) < MIN_TOKEN_CHARS or len(set(token)) < 8
    ]
    for name, value in (
        ("AFMON_METRICS_TOKEN", settings.metrics_token),
        ("AFMON_METRICS_PASSWORD", settings.metrics_password),
    ):
        secret = value.get_secret_value() if value else None
        if secret is not None and (len(secret) < MIN_TOKEN_CHARS or len(set(secret)) < 8):
            weak.append(f"{name} is weak; use at least {MIN_TOKEN_CHARS} random characters")
    if settings.oidc_client_id:
        secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
        if len(secret) < 32 or len(set(secret)) < 8:
            weak.append(
                "sign-in is configured (AFMON_OIDC_CLIENT_ID) but AFMON_SESSION_SECRET is "
                "missing or weak; set at least 32 random characters, the same on every worker"
            )
    return weak


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser(
        "serve",
        help="run the aggregator (ingest API, /metrics, dashboard)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="listen address (AFMON_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (AFMON_PORT, default 8600)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    serve.add_argument("--identity-file", help="identity map TOML (AFMON_IDENTITY_FILE)")
    serve.add_argument(
        "--workers", type=int, help="worker processes on one port (PostgreSQL only; default 1)"
    )
    serve.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="log level (AFMON_LOG_LEVEL, default info); debug also shows the traceback of a "
        "failed start",
    )
    serve.set_defaults(func=cmd_serve)
