"""The start-up log of `afmon serve`: what this server is and what it will accept, in a few
lines an operator can check at a glance (version, database, address, who can write, who can
read), with a warning where a setting leaves the server unable to do its job."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from afmon.aggregator import __version__
from afmon.aggregator.cli.redact import mask_url
from afmon.aggregator.core.settings import ServerSettings

log = logging.getLogger("afmon.serve")


def database_text(url: URL) -> str:
    """The URL without its password; for SQLite also the file's absolute path."""
    shown = mask_url(url.render_as_string(hide_password=False))
    if url.get_backend_name() == "sqlite" and url.database:
        path = Path(url.database).expanduser()
        if not path.is_absolute():
            shown += f" ({path.resolve()})"
    return shown


def listen_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def active_agent_tokens(engine: Engine) -> dict[str, int]:
    """Facility -> number of per-agent tokens in the database that are not revoked."""
    from afmon.aggregator.auth.agent_tokens import list_tokens

    counts: dict[str, int] = {}
    for token in list_tokens(engine):
        if token.revoked is None:
            counts[token.facility] = counts.get(token.facility, 0) + 1
    return counts


def log_startup(
    settings: ServerSettings,
    url: URL,
    engine: Engine,
    schema: tuple[str | None, str | None],
    workers: int = 1,
) -> None:
    before, after = schema
    log.info("afmon %s starting", __version__)
    migrated = f"migrated {before or 'empty'} -> {after}" if before != after else f"at {after}"
    log.info("database: %s; schema %s", database_text(url), migrated)
    many = f" ({workers} worker processes)" if workers > 1 else ""
    log.info("listening on %s%s", listen_url(settings.host, settings.port), many)
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        log.info("only this machine can connect: agents on other nodes need --host 0.0.0.0")

    static = sorted(settings.facility_tokens)
    stored = active_agent_tokens(engine)
    if not static and not stored:
        log.warning(
            "no agent can deliver data: AFMON_FACILITY_TOKENS is empty and the database has no "
            "agent tokens; create one with `afmon agent-token create NODE --facility FACILITY` "
            "and give it to the agent as AFMON_TOKEN"
        )
    else:
        parts = []
        if static:
            parts.append(f"AFMON_FACILITY_TOKENS for {', '.join(static)}")
        if stored:
            listed = ", ".join(f"{n} for {facility}" for facility, n in sorted(stored.items()))
            parts.append(f"agent tokens in the database: {listed}")
        log.info("agents can deliver data with %s", "; ".join(parts))

    issuers = len(settings.oidc_issuers)
    if settings.local_mode:
        log.warning(
            "local mode (AFMON_LOCAL_MODE): readers are not authenticated and pick who they "
            "are; for a demo on this machine only"
        )
    elif settings.sign_in_issuers:
        log.info(
            "sign-in: through %d of %d trusted issuers (a client each: its own or "
            "AFMON_OIDC_CLIENT_ID); bearer tokens from all of them",
            len(settings.sign_in_issuers),
            issuers,
        )
    elif issuers:
        log.info(
            "sign-in: not configured (no issuer has a client, AFMON_OIDC_CLIENT_ID unset); "
            "readers send bearer tokens from %d trusted issuers (identity map, "
            "AFMON_OIDC_ISSUERS)",
            issuers,
        )
    else:
        log.warning(
            "no reader can sign in: no trusted issuer (identity map, AFMON_OIDC_ISSUERS) and "
            "AFMON_OIDC_CLIENT_ID unset, so the dashboard and the read API refuse everyone "
            "(docs/security.md)"
        )
