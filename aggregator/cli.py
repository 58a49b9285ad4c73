"""The `afmon` command: serve, demo, simulate, identity check."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from aggregator.report.cli import add_report_parser
from aggregator.settings import ServerSettings
from alerts.cli import add_parser as add_alerts_parser

EPILOG = """\
Every setting can also be given as an environment variable with the AFMON_ prefix
(AFMON_DATABASE_URL, AFMON_FACILITY_TOKENS, ...); see docs/configuration.md.
Command-line flags win over the environment."""


def _settings(args: argparse.Namespace) -> ServerSettings:
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "database_url": getattr(args, "database_url", None),
            "identity_file": getattr(args, "identity_file", None),
        }.items()
        if v is not None
    }
    try:
        return ServerSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across settings: its message names them
            sys.exit(f"afmon: bad settings: {first['msg'].removeprefix('Value error, ')}")
        sys.exit(f"afmon: bad setting AFMON_{str(first['loc'][0]).upper()}: {first['msg']}")
    except SettingsError as exc:  # e.g. a JSON setting that is not JSON
        sys.exit(f"afmon: bad setting: {exc}")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from aggregator.app import create_app
    from aggregator.identity import IdentityError

    settings = _settings(args)
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
            "aggregator.cli:worker_app",
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
    from aggregator.app import create_app

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
    if settings.oidc_client_id:
        secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
        if len(secret) < 32 or len(set(secret)) < 8:
            weak.append(
                "sign-in is configured (AFMON_OIDC_CLIENT_ID) but AFMON_SESSION_SECRET is "
                "missing or weak; set at least 32 random characters, the same on every worker"
            )
    return weak


def cmd_agent_token(args: argparse.Namespace) -> int:
    from aggregator.agent_tokens import TokenError, create_token, list_tokens, revoke_token
    from aggregator.db import create_schema, make_engine

    settings = _settings(args)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    try:
        if args.action == "create":
            token = create_token(engine, args.name, args.facility)
            print(token)
            print(
                f"agent token {args.name!r} for facility {args.facility!r} created; it is shown "
                "only now: give it to the agent as AFMON_TOKEN",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            revoke_token(engine, args.name)
            print(f"agent token {args.name!r} revoked", file=sys.stderr)
        else:
            for t in list_tokens(engine):
                state = "active" if t.revoked is None else "revoked"
                print(f"{t.name}\t{t.facility}\t{state}")
    except TokenError as exc:
        print(f"afmon: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from aggregator import migrate

    settings = _settings(args)
    if args.action == "upgrade":
        before, after = migrate.upgrade(settings.database_url, args.revision)
        print(f"database schema: {before or 'empty'} -> {after}")
    else:
        from aggregator.db import make_engine

        engine = make_engine(settings.database_url)
        print(migrate.current_revision(engine) or "none (not under migrations)")
        engine.dispose()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from aggregator.demo import run_demo

    return run_demo(Path(args.data_dir), port=args.port, hours=args.hours, nodes=args.nodes)


def cmd_simulate(args: argparse.Namespace) -> int:
    import httpx

    from collectors.simulator import FacilitySimulator, Poster, backfill

    sim = FacilitySimulator(
        facility=args.facility,
        nodes=args.nodes,
        members_per_vo=args.members_per_vo,
        seed=args.seed,
        rich=not args.basic,
    )
    if args.identity_out:
        Path(args.identity_out).write_text(sim.identity_toml())
        print(f"identity map for the simulated members written to {args.identity_out}")
    poster = Poster(args.url, args.token)
    now = time.time()
    try:
        n = backfill(sim, poster, now - args.hours * 3600, now)
        print(f"posted {n} batches covering {args.hours} h")
        while args.live:
            time.sleep(sim.interval)
            for batch in sim.batches(now, time.time(), ticks_per_batch=1):
                poster.post(batch)
    except (httpx.HTTPError, RuntimeError) as exc:
        sys.exit(f"afmon simulate: cannot post to {args.url}: {exc}")
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_identity_check(args: argparse.Namespace) -> int:
    from aggregator.identity import IdentityError, parse_identity_file

    try:
        data = parse_identity_file(Path(args.file))
    except IdentityError as exc:
        print(f"afmon: {exc}", file=sys.stderr)
        return 1
    accounts = sum(len(m.accounts) for m in data.members)
    print(f"{args.file}: {len(data.vos)} VOs, {len(data.members)} members, {accounts} accounts: OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afmon",
        description="afmon: monitoring and accounting for HEP Analysis Facilities, per VO member.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    demo = sub.add_parser(
        "demo", help="a live demo facility: server, a real agent on this machine, simulated nodes"
    )
    demo.add_argument("--data-dir", default="var/demo", help="where the demo keeps its files")
    demo.add_argument("--port", type=int, default=8600, help="dashboard/API port (default 8600)")
    demo.add_argument(
        "--hours",
        type=float,
        default=24.0,
        help="history to simulate before going live (default 24)",
    )
    demo.add_argument("--nodes", type=int, default=8, help="simulated nodes (default 8)")
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulate", help="post a simulated facility's batches to a server")
    sim.add_argument("--url", default="http://127.0.0.1:8600", help="aggregator URL")
    sim.add_argument(
        "--token",
        default=os.environ.get("AFMON_TOKEN", ""),
        help="the facility's agent token (AFMON_TOKEN)",
    )
    sim.add_argument("--facility", default="demo-af")
    sim.add_argument("--nodes", type=int, default=8)
    sim.add_argument("--members-per-vo", type=int, default=5)
    sim.add_argument("--hours", type=float, default=24.0, help="history to simulate")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--live", action="store_true", help="keep going in real time afterwards")
    sim.add_argument(
        "--basic",
        action="store_true",
        help="only sessions, CPU, memory and IO (default: also spawn waits, Dask, batch jobs, "
        "GPUs and data access)",
    )
    sim.add_argument("--identity-out", help="write the simulated members' identity map here")
    sim.set_defaults(func=cmd_simulate)

    tokens = sub.add_parser(
        "agent-token", help="per-agent credentials: create (printed once), list, revoke"
    )
    tokens.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    tokens_sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tokens_sub.add_parser("create", help="create a token bound to a facility")
    create.add_argument("name", help="a unique name, e.g. the node's host name")
    create.add_argument("--facility", required=True, help="the facility the agent may write")
    revoke = tokens_sub.add_parser("revoke", help="revoke a token (takes effect within 5 s)")
    revoke.add_argument("name")
    tokens_sub.add_parser("list", help="list tokens (names, facilities, states; never secrets)")
    tokens.set_defaults(func=cmd_agent_token)

    db = sub.add_parser("db", help="database schema migrations (Alembic): upgrade, current")
    db.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="migrate the schema (run before starting new workers)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    db_sub.add_parser("current", help="print the schema's revision")
    db.set_defaults(func=cmd_db)

    ident = sub.add_parser("identity", help="identity map tools")
    ident_sub = ident.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    check = ident_sub.add_parser("check", help="validate an identity map file")
    check.add_argument("file")
    check.set_defaults(func=cmd_identity_check)
    add_report_parser(sub)
    add_alerts_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
