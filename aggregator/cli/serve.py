"""`afmon serve`: the aggregator (ingest API, read API, /metrics, dashboard)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from afmon.aggregator.cli.common import EPILOG, settings_from_args
from afmon.aggregator.core.settings import ServerSettings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from afmon.aggregator.identity.accounts import IdentityError
    from afmon.aggregator.web.app import create_app

    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    weak = weak_secrets(settings)
    if weak:
        sys.exit("afmon: refusing to start: " + "; ".join(weak))
    workers = getattr(args, "workers", None) or 1
    if workers > 1 and settings.database_url.startswith("sqlite"):
        sys.exit("afmon: --workers needs PostgreSQL (AFMON_DATABASE_URL=postgresql+psycopg://...)")
    try:
        app = create_app(settings)  # with workers: checks the identity map and schema once
    except IdentityError as exc:
        sys.exit(f"afmon: identity map: {exc}")
    if workers > 1:  # docs/scale.md
        for name in ("host", "port", "database_url", "identity_file"):  # workers read the env
            if getattr(args, name, None) is not None:
                os.environ[f"AFMON_{name.upper()}"] = str(getattr(args, name))
        app.state.services.engine.dispose()
        uvicorn.run(
            "afmon.aggregator.cli.serve:worker_app",
            factory=True,
            workers=workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
        )
        return 0
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower())
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
    serve.set_defaults(func=cmd_serve)
