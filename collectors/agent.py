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
        "settings or spool directory; 3 (--once) the server rejected a batch.",
    )
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
    return parser


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    once, print_only = args.pop("once"), args.pop("print")
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

    import httpx
    import msgspec

    from afmon.collectors import wire
    from afmon.collectors.probes.registry import build_probes
    from afmon.collectors.push import PushLoop
    from afmon.collectors.spool import Spool

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
        spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes)
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
