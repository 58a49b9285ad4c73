"""Run two real xrootd servers, the XRootD probe's listener and `xrdcp` clients together in a
private network namespace, and write what the probe reports as JSON lines.

xrootd 5.5 binds `*:port`, so everything runs inside `unshare -n` (only a loopback there):

    unshare -n python -m tests.collectors.xrootd_netns OUT.jsonl

Server A (port 21094) is configured as local storage, server B (port 21095) as a cache. Two
local users (`daemon` and `nobody`, via `runuser -u`) read files of known sizes; `nobody` writes
one to B; then A is restarted and `daemon` reads again. Output lines: `{"plan": ...}` (what was
moved, by whom), `{"batch": <wire batch>}` after each phase, `{"health": ...}` at the end.
Every process started here is stopped on the way out, and dies with this one (PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from afmon.collectors import wire
from afmon.collectors.probes.xrootd import Monitor, XRootDProbe

SUMMARY_PORT, DETAIL_PORT = 9931, 9930
SERVERS = {"A": 21094, "B": 21095}
ROLES = {"127.0.0.1:21094": "local", "127.0.0.1:21095": "cache"}
# (user, server, file, size): reads, phase 1; A restarts; then phase 2
FILES = {"A": {"f1.root": 3_000_017, "f2.root": 1_234_567}, "B": {"f3.root": 777_777}}
PHASE1 = [("daemon", "A", "f1.root"), ("nobody", "A", "f2.root"), ("daemon", "B", "f3.root")]
UPLOAD = ("nobody", "B", "up.root", 555_555)
PHASE2 = [("daemon", "A", "f1.root")]
FACILITY, NODE = "af-test", "xrd-node"

CONFIG = """xrd.port {port}
xrd.network nodnr
all.role server
all.export /
oss.localroot {data}
all.adminpath {admin}
all.pidpath {run}
all.sitename TEST-AF
xrd.report 127.0.0.1:{summary} every 1s all
xrootd.monitor all auth flush 1s window 1s fstat 1s lfn ops xfr 1 ident 5s dest fstat info user \
files 127.0.0.1:{detail}
"""


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def start_xrootd(work: Path, name: str) -> subprocess.Popen[bytes]:
    base = work / name
    cfg = base / "xrootd.cfg"
    cfg.write_text(
        CONFIG.format(
            port=SERVERS[name],
            data=base / "data",
            admin=base / "admin",
            run=base / "run",
            summary=SUMMARY_PORT,
            detail=DETAIL_PORT,
        )
    )
    return subprocess.Popen(
        ["xrootd", "-c", str(cfg), "-l", str(base / "xrootd.log"), "-R", "xrootd", "-n", name],
        preexec_fn=_die_with_parent,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def xrdcp(user: str, src: str, dst: str) -> None:
    subprocess.run(
        ["runuser", "-u", user, "--", "xrdcp", "-s", "-f", src, dst],
        check=True,
        timeout=60,
        preexec_fn=_die_with_parent,
    )


def settled(monitor: Monitor, probe: XRootDProbe, opened: dict[str, int]) -> bool:
    """Every expected open seen, no file left open, and each server's summary caught up."""
    with probe._lock:  # noqa: SLF001  (the helper reads the live state the probe guards)
        if any(st.files for st in monitor.streams.values()):
            return False
        for label, n in opened.items():
            t = monitor.servers.get(label)
            if t is None or t.values["opened"] != n or t.values["opens"] != n:
                return False
            if t.values["link_out"] < t.values["read"] or t.values["link_in"] < t.values["written"]:
                return False
        return True


def main(out_path: str) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="afmon-xrootd-"))
    work.chmod(0o755)  # the clients run as other users
    procs: dict[str, subprocess.Popen[bytes]] = {}
    monitor = Monitor(ROLES, default_role="remote")
    probe = XRootDProbe(NODE, monitor, summary_port=SUMMARY_PORT, detail_port=DETAIL_PORT)
    out = open(out_path, "w")  # noqa: SIM115  (closed in finally)
    seq = 0

    def emit(**line: object) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    def batch() -> None:
        nonlocal seq
        seq += 1
        now = time.time()
        b = wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id="xrootd-netns",
            facility=FACILITY,
            node=NODE,
            seq=seq,
            sent_at=now,
            series=probe.collect(now).series,
        )
        emit(batch=json.loads(wire.encode(b)))

    def wait_settled(opened: dict[str, int]) -> None:
        deadline = time.monotonic() + 20
        while not settled(monitor, probe, opened) and time.monotonic() < deadline:
            time.sleep(0.2)

    try:
        for name, files in FILES.items():
            for sub in ("data", "admin", "run"):
                (work / name / sub).mkdir(parents=True)
            for fname, size in files.items():
                (work / name / "data" / fname).write_bytes(os.urandom(size))
            shutil.chown(work / name, "xrootd", "xrootd")
            for p in (work / name).rglob("*"):
                shutil.chown(p, "xrootd", "xrootd")
        upload = work / UPLOAD[2]
        upload.write_bytes(os.urandom(UPLOAD[3]))
        upload.chmod(0o644)
        emit(
            plan={
                "files": FILES,
                "phase1": PHASE1,
                "upload": UPLOAD,
                "phase2": PHASE2,
                "roles": ROLES,
            }
        )
        probe.start()  # listening before the servers start: their whole life is seen
        for name in SERVERS:
            procs[name] = start_xrootd(work, name)
        time.sleep(0.5)
        for user, server, fname in PHASE1:
            xrdcp(user, f"root://127.0.0.1:{SERVERS[server]}//{fname}", "/dev/null")
        user, server, fname, _size = UPLOAD
        xrdcp(user, str(upload), f"root://127.0.0.1:{SERVERS[server]}//{fname}")
        wait_settled({"127.0.0.1:21094": 2, "127.0.0.1:21095": 2})
        batch()
        stop(procs["A"])
        procs["A"] = start_xrootd(work, "A")  # a new server life: new stod, pid, tos
        time.sleep(0.5)
        for user, server, fname in PHASE2:
            xrdcp(user, f"root://127.0.0.1:{SERVERS[server]}//{fname}", "/dev/null")
        wait_settled({"127.0.0.1:21094": 3, "127.0.0.1:21095": 2})
        batch()
        with probe._lock:  # noqa: SLF001
            emit(
                health={
                    "errors": dict(monitor.errors),
                    "seq": dict(monitor.seq),
                    "evicted": dict(monitor.evicted),
                    "packets": dict(monitor.packets),
                }
            )
        return 0
    finally:
        for proc in procs.values():
            stop(proc)
        probe.close()
        out.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
