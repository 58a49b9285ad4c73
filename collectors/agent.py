"""`afmon-agent`: the node agent's command line.

Settings come from AFMON_* environment variables (AgentSettings); command-line flags override
them. Nothing is read, created or connected until main() runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pydantic import ValidationError
from pydantic_settings import SettingsError

from afmon.aggregator import __version__  # the distribution's version: one place for both commands
from afmon.collectors.settings import AgentSettings

log = logging.getLogger("afmon.agent")

EXIT_OK = 0
EXIT_PENDING = 1  # --once: some batches could not be sent and stay in the spool
EXIT_USAGE = 2  # bad flags or settings, or the spool directory is unusable
EXIT_REJECTED = 3  # --once: the server refused a batch (moved to rejected/)


# (flag, settings field, metavar, help)
_FLAGS: list[tuple[str, str, str, str]] = [
    ("--server-url", "server_url", "URL", "aggregator base URL [http://127.0.0.1:8600]"),
    ("--token", "token", "TOKEN", "bearer token of this agent (prefer the env variable)"),
    ("--facility", "facility", "NAME", "facility name [demo-af]"),
    ("--node", "node", "NAME", "node name in every batch [this host's name]"),
    ("--interval", "interval_seconds", "SECONDS", "seconds between collections [15]"),
    ("--spool-dir", "spool_dir", "DIR", "spool directory [~/.local/state/afmon-agent, "
     "or /var/lib/afmon-agent as root]"),
    ("--spool-max-bytes", "spool_max_bytes", "BYTES",
     "spool size cap; beyond it the oldest batches are dropped [67108864]"),
    ("--hepscore23-per-core", "hepscore23_per_core", "HS23",
     "this node's HEPscore23 per core [10]"),
    ("--min-uid", "min_uid", "UID",
     "leave out accounts with a lower uid: system accounts are nobody's usage [1000]"),
    ("--exclude-users", "exclude_users", "JSON",
     'more accounts to leave out, by name, e.g. ["nobody", "cvmfs"] [[]]'),
    ("--proc-root", "proc_root", "DIR", "where /proc is mounted [/proc]"),
    ("--cgroup-root", "cgroup_root", "DIR", "where cgroups are mounted [/sys/fs/cgroup]"),
    ("--timeout", "timeout_seconds", "SECONDS", "HTTP timeout per request [10]"),
    ("--gpu-enabled", "gpu_enabled", "BOOL", "run the GPU probe (NVML) [true]"),
    ("--gpu-process-interval", "gpu_process_interval_seconds", "SECONDS",
     "seconds between polls of the GPU process list [60]"),
    ("--gpu-idle-threshold", "gpu_idle_threshold_ratio", "RATIO",
     "a held GPU busy under this is idle [0.05]"),
    ("--gpu-idle-min", "gpu_idle_min_seconds", "SECONDS",
     "idle-but-held intervals are reported after this long [600]"),
    ("--xrootd", "xrootd_enabled", "BOOL", "listen for XRootD monitoring [false]"),
    ("--xrootd-listen-host", "xrootd_listen_host", "ADDR", "address to listen on [127.0.0.1]"),
    ("--xrootd-summary-port", "xrootd_summary_port", "PORT", "UDP port, xrd.report [9931]"),
    ("--xrootd-detail-port", "xrootd_detail_port", "PORT", "UDP port, xrootd.monitor [9930]"),
    ("--xrootd-servers", "xrootd_servers", "JSON",
     'role per server, e.g. {"xcache.af:1094": "cache"} [{}]'),
    ("--xrootd-default-role", "xrootd_default_role", "ROLE",
     "role of servers not listed: local, cache or remote [remote]"),
    ("--xrootd-max-open-files", "xrootd_max_open_files", "N",
     "open files remembered per server; older ones are dropped [100000]"),
    ("--xrootd-format-patterns", "xrootd_format_patterns", "JSON",
     'input data formats from file paths, e.g. [["physlite", "DAOD_PHYSLITE\\."]] '
     "[ATLAS and CMS names]"),
    ("--service-checks", "service_checks", "JSON",
     'services to check each interval, e.g. [{"service": "hub", "url": "http://hub/hub/health"},'
     ' {"service": "xrootd", "tcp": "xrd:1094"}] [[]]'),
    ("--service-check-timeout", "service_check_timeout_seconds", "SECONDS",
     "seconds before a service check counts as down [5]"),
    ("--jupyterhub-url", "jupyterhub_url", "URL",
     "JupyterHub to measure time-to-session on, e.g. http://hub:8000 [off]"),
    ("--jupyterhub-token", "jupyterhub_token", "TOKEN",
     "the hub service's API token (prefer the env variable)"),
    ("--jupyterhub-poll", "jupyterhub_poll_seconds", "SECONDS",
     "seconds between JupyterHub polls [1]"),
    ("--dask-gateway-url", "dask_gateway_url", "URL",
     "dask-gateway whose clusters to report, e.g. http://gateway:8000 [off]"),
    ("--dask-gateway-token", "dask_gateway_token", "TOKEN",
     "the gateway credential: API token, or basic auth's password (prefer the env variable)"),
    ("--dask-gateway-auth", "dask_gateway_auth", "SCHEME",
     "jupyterhub, token, bearer or basic [jupyterhub]"),
    ("--dask-gateway-users", "dask_gateway_users", "JSON",
     'users whose clusters to list, e.g. ["alice"] (basic: any number, else one) [[]]'),
    ("--dask-gateway-poll", "dask_gateway_poll_seconds", "SECONDS",
     "least seconds between dask-gateway polls [30]"),
    ("--slurm", "slurm_enabled", "BOOL", "send finished Slurm jobs from sacct [false]"),
    ("--sacct", "sacct_path", "PATH", "the sacct command [sacct]"),
    ("--htcondor", "htcondor_enabled", "BOOL", "send finished HTCondor jobs [false]"),
    ("--condor-history", "condor_history_path", "PATH",
     "the condor_history command [condor_history]"),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afmon-agent",
        description="afmon node agent: measures per-user CPU, memory and IO and node capacity, "
        "spools batches on disk and pushes them to the afmon aggregator.",
        epilog="Exit status: 0 all sent; 1 (--once) batches left in the spool; 2 bad usage, "
        "settings or spool directory (or another agent holds it); 3 (--once) the server "
        "rejected a batch. Batches the server refused whole wait in SPOOL_DIR/rejected/: "
        "`afmon-agent rejected --help` lists them and puts them back.",
    )
    parser.add_argument("--version", action="version", version=f"afmon {__version__}")
    for flag, field, metavar, text in _FLAGS:
        env = "AFMON_" + field.upper()
        parser.add_argument(
            flag, dest=field, metavar=metavar, default=argparse.SUPPRESS, help=f"{text} (${env})"
        )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="collect once, send the spool, exit (see exit status)"
    )
    mode.add_argument(
        "--print", action="store_true", help="collect once and print the batch JSON; send nothing"
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=LOG_LEVELS,
        help="log level [$AFMON_LOG_LEVEL, else INFO]",
    )
    _add_rejected_commands(parser)
    return parser


def _add_rejected_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    rejected = commands.add_parser(
        "rejected",
        help="list or requeue the batches the server refused whole (SPOOL_DIR/rejected/)",
        description="Batches the server refused whole (HTTP 400, 413, 422: a malformed "
        "envelope, more series than its AFMON_LIMIT_SERIES_PER_BATCH, a body too large) wait "
        "in SPOOL_DIR/rejected/ with their reason; the newest 200 are kept. Once the cause is "
        "fixed, requeue puts them back and the agent sends them, oldest first, at its next "
        "flush (a running agent within one interval; or run `afmon-agent --once`).",
        epilog="Exactly once: a requeued batch keeps its agent id and seq, so a batch the "
        "server already applied is answered `duplicate` and never counted twice. Exit status: "
        "0 done; 1 some batches could not be requeued (named on stderr); 2 bad usage, no "
        "spool there, or (--split) the spool is held by a running agent.",
    )
    actions = rejected.add_subparsers(dest="rejected_command", metavar="ACTION", required=True)
    list_ = actions.add_parser(
        "list",
        help="one line per rejected batch: seq, samples, series, when, reason",
        description="One line per batch in SPOOL_DIR/rejected/, lowest seq first: its seq, "
        "samples, series (? if the file cannot be read back), when it was refused, and why.",
    )
    requeue = actions.add_parser(
        "requeue",
        help="move rejected batches back into the spool to be sent again",
        description="Move the chosen batches from SPOOL_DIR/rejected/ back to "
        "SPOOL_DIR/batches/ under their original seq; the agent sends them oldest first. "
        "Safe while the agent runs (a rename; no seq is allocated), except with --split.",
        epilog="--split N: a batch with more than N series is put back as pieces of at most N "
        "series (its events in the first) under new seqs from the spool; one that fits is "
        "requeued whole. Use it for a batch refused for its size (413, or 422 over "
        "AFMON_LIMIT_SERIES_PER_BATCH) when the server's limit stays. It is still exactly "
        "once: a batch refused whole was never applied, so its records reach the ledger only "
        "through the pieces. It allocates seqs, so stop the agent first (the spool's lock "
        "says if one runs). An interrupted split is finished, with the same seqs, by running "
        "it again.",
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("seqs", nargs="*", type=int, default=[], metavar="SEQ",
                       help="seq of a rejected batch (as `rejected list` shows it)")  # fmt: skip
    which.add_argument("--all", action="store_true", help="every rejected batch")
    requeue.add_argument(
        "--split",
        type=int,
        default=None,
        metavar="N",
        help="put back batches of more than N series as pieces of at most N (see below)",
    )
    for sub in (list_, requeue):
        sub.add_argument(
            "--spool-dir",
            dest="spool_dir",
            metavar="DIR",
            default=argparse.SUPPRESS,
            help="spool directory ($AFMON_SPOOL_DIR; see afmon-agent --help)",
        )


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    once, print_only = args.pop("once"), args.pop("print")
    command = args.pop("command", None)
    rejected_args = {
        k: args.pop(k) for k in ("rejected_command", "seqs", "all", "split") if k in args
    }
    if command is not None and (once or print_only):
        parser.error(f"--once and --print do not go with the {command} command")
    if rejected_args.get("split") is not None and rejected_args["split"] < 1:
        parser.error("--split N needs N >= 1")
    level = args.pop("log_level") or os.environ.get("AFMON_LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        parser.error(f"AFMON_LOG_LEVEL={level!r} is not one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    try:
        settings = AgentSettings(**args)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            log.error("bad setting %s (AFMON_%s): %s", field, field.upper(), err["msg"])
        return EXIT_USAGE
    except SettingsError as exc:  # a JSON variable that is not JSON
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        log.error(
            "bad setting %s (AFMON_%s): not valid JSON (%s); afmon-agent --help shows an example",
            field,
            field.upper(),
            exc.__cause__ or exc,
        )
        return EXIT_USAGE

    if command == "rejected":
        return _rejected(settings.spool_dir, **rejected_args)

    import httpx
    import msgspec

    from afmon.collectors import wire
    from afmon.collectors.probes.registry import build_probes
    from afmon.collectors.push import PushLoop
    from afmon.collectors.spool import Spool, SpoolBusy

    def make_loop(spool: Spool, client: httpx.Client, state_dir: Path | None) -> PushLoop:
        return PushLoop(
            probes=build_probes(settings, state_dir),
            spool=spool,
            client=client,
            server_url=settings.server_url,
            token=settings.token.get_secret_value() if settings.token else None,
            facility=settings.facility,
            node=settings.node,
            interval=settings.interval_seconds,
        )

    if print_only:  # a throw-away spool: --print leaves nothing behind and sends nothing
        with tempfile.TemporaryDirectory() as tmp, httpx.Client() as unused:
            loop = make_loop(Spool(tmp), unused, None)
            batch = loop.build_batch(loop.clock(), seq=0, agent_id=loop.spool.agent_id)
        sys.stdout.write(msgspec.json.format(wire.encode(batch)).decode() + "\n")
        return EXIT_OK

    try:
        spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes, lock=True)
    except SpoolBusy as exc:
        log.error("%s: stop it first; one spool belongs to one agent", exc)
        return EXIT_USAGE
    except OSError as exc:
        log.error(
            "cannot use spool directory %s: %s (set AFMON_SPOOL_DIR)", settings.spool_dir, exc
        )
        return EXIT_USAGE

    if settings.token is None:
        log.warning("no token set (AFMON_TOKEN or --token): the server will likely refuse batches")
    with httpx.Client(timeout=settings.timeout_seconds) as client:
        loop = make_loop(spool, client, settings.spool_dir)
        if once:
            result = loop.run_once()
            log.info(
                "sent %d, rejected %d, left in spool %d",
                result.sent,
                result.rejected,
                result.pending,
            )
            if result.pending:
                return EXIT_PENDING
            return EXIT_REJECTED if result.rejected else EXIT_OK
        log.info(
            "agent %s pushing to %s every %g s (spool %s)",
            spool.agent_id,
            settings.server_url,
            settings.interval_seconds,
            settings.spool_dir,
        )
        stop = threading.Event()
        _on_signals(stop)
        loop.run_forever(stop)
        for probe in loop.probes:  # probes with state checkpoint it on the way out
            getattr(probe, "close", lambda: None)()
    return EXIT_OK


def _rejected(
    spool_dir: Path,
    rejected_command: str,
    seqs: Sequence[int] = (),
    all: bool = False,  # noqa: A002 - the flag's name
    split: int | None = None,
) -> int:
    """`afmon-agent rejected list | requeue`: see build_parser()."""
    import time

    from afmon.collectors import spool as spooling

    if not (spool_dir / "batches").is_dir():
        log.error("no agent spool at %s (set --spool-dir or AFMON_SPOOL_DIR)", spool_dir)
        return EXIT_USAGE
    items, others = spooling.rejected(spool_dir)

    if rejected_command == "list":
        if not items:
            print(f"no rejected batches in {spool_dir / 'rejected'}")
        else:
            print(f"{'SEQ':>12}  {'SAMPLES':>7}  {'SERIES':>6}  {'REJECTED':19}  REASON")
        for item in items:
            try:
                series = str(len(spooling.read_rejected(item).series))
            except spooling.RequeueError:
                series = "?"
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.rejected_at))
            reason = " / ".join(item.reason.splitlines())
            print(f"{item.seq:>12}  {item.samples:>7}  {series:>6}  {when:19}  {reason}")
        if others:
            print(f"({len(others)} other files in rejected/ are not batches: "
                  f"{', '.join(p.name for p in others[:5])})")  # fmt: skip
        return EXIT_OK

    by_seq = {item.seq: item for item in items}
    unknown = [seq for seq in seqs if seq not in by_seq]
    for seq in unknown:
        log.error(
            "seq %d is not in %s (see `afmon-agent rejected list`)", seq, spool_dir / "rejected"
        )
    chosen = items if all else [by_seq[seq] for seq in dict.fromkeys(seqs) if seq in by_seq]
    if not chosen and not unknown:
        print(f"no rejected batches in {spool_dir / 'rejected'}")
        return EXIT_OK
    locked: spooling.Spool | None = None
    if split is not None or any(spooling.split_marker(item) for item in chosen):
        try:  # a split allocates seqs: no agent may be allocating them meanwhile
            locked = spooling.Spool(spool_dir, lock=True)
        except spooling.SpoolBusy as exc:
            log.error("%s: stop it before --split (it allocates seqs); a plain requeue "
                      "works while the agent runs", exc)  # fmt: skip
            return EXIT_USAGE
    failed = len(unknown)
    for item in chosen:
        try:
            marker = spooling.split_marker(item)
            if locked is not None and (split is not None or marker is not None):
                pieces = spooling.split(locked, item, split or (marker[0] if marker else 1))
                where = ", ".join(str(p.seq) for p in pieces)
                print(f"requeued seq {item.seq} ({item.samples} samples) as seq {where}")
            else:
                spooling.requeue(spool_dir, item)
                print(f"requeued seq {item.seq} ({item.samples} samples)")
        except (spooling.RequeueError, OSError) as exc:
            log.error("%s", exc)
            failed += 1
    return 1 if failed else EXIT_OK


def _on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
