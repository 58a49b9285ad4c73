"""Run three real xrootd servers, the XRootD probe's listener and `xrdcp` clients together in a
private network and mount namespace, and write what the probe reports as JSON lines, beside
what xrootd itself recorded (its summary stream, and the files on disk).

xrootd 5.5 binds `*:port`, so everything runs inside `unshare -n -m` (only a loopback there;
the mount namespace lets a 19-character local user exist for this run only, by bind-mounting
copies of /etc/passwd and /etc/group):

    unshare -n -m python -m tests.collectors.xrootd_netns OUT.jsonl

Server A (port 21094, local storage) authenticates clients with `sec.protocol unix`: its `u`
records name the client's real account (`&p=unix&n=...`). Server B (port 21095, a cache) has
no authentication protocol: its `u` records carry only the 8-character name the client
asserted. Server C (port 21096, local storage) authenticates with `sec.protocol sss` only: its
keytab (made here with `xrdsssadmin`) holds one key per identity, and each client account
holds a copy (mode 0600, its own) of the one key it may use (SSS_KEYS); the `u` record names
the key's user (`&p=sss&n=...`), whatever account or URL user the client has. Phases (a
`{"batch": ...}` line after each):

1. reads and an upload: `daemon`, `nobody` and the 19-character LONG read from A (`daemon` also
   as `root://nobody@`); on B `daemon` reads as `root://nobody@` (a spoof) and LONG reads;
   `nobody` uploads with xrdcp (pgwrite) to A; on C LONG reads with its key, `daemon` reads
   with its key as `root://nobody@` (a spoof) and with an `anybody` key (for which xrdcp sends
   no name of its own: C hears `nobody`); `daemon` fails to log in to C with LONG's key (it
   cannot read it) and with its own key in a keytab others may read (`{"sss_refused": ...}`);
2. a transfer from B killed by the client mid-file (its close record says read=0);
3. the agent restarts while LONG reads a 7 MiB file from A through a slow pipe (its open
   record seen, its close still to come): the probe is closed (checkpoint) and a new one takes
   up its state file;
4. A restarts (a new server life) and `daemon` reads again.

Every server's summary stream also goes to a second port where a plain recorder keeps the
server's own `link in`/`link out` per server life: `{"xrootd": ...}` at the end, with the
sizes of the files on disk and `{"health": ...}`. Every process started here is stopped on
the way out, and dies with this one (PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from afmon.collectors import wire
from afmon.collectors.probes import xrootd_packets as xp
from afmon.collectors.probes.xrootd import Monitor, XRootDProbe

SUMMARY_PORT, DETAIL_PORT, RECORDER_PORT = 9931, 9930, 9932
SERVERS = {"A": 21094, "B": 21095, "C": 21096}
LABEL = {name: f"127.0.0.1:{port}" for name, port in SERVERS.items()}
ROLES = {LABEL["A"]: "local", LABEL["B"]: "cache", LABEL["C"]: "local"}
LONG = "analysis-user-19chr"  # 19 characters: kXR_login carries only "analysis"
LONG_UID = 64019
FILES = {
    "A": {"f1.root": 3_000_017, "f2.root": 1_234_567, "slow.root": 7 << 20},
    "B": {"f3.root": 777_777, "big.root": 60_000_000},
    "C": {"f4.root": 2_222_223, "f5.root": 555_557},
}
# (run as, URL user or None, server, file)
PHASE1 = [
    ("daemon", None, "A", "f1.root"),
    ("nobody", None, "A", "f2.root"),
    (LONG, None, "A", "f1.root"),
    ("daemon", "nobody", "A", "f2.root"),  # authenticated: still daemon's
    ("daemon", "nobody", "B", "f3.root"),  # unauthenticated: only "nobody" asserted
    (LONG, None, "B", "f3.root"),
]
# server C's sss keys: name -> (the account holding a copy, the key's user, its group)
SSS_KEYS = {
    "lena": (LONG, LONG, LONG),
    "dana": ("daemon", "daemon", "daemon"),
    # `anybody`: the server takes the name the client sends; xrdcp (no sss ID registry in the
    # process) sends `nobody`, not its account's name
    "any": ("daemon", "anybody", "usrgroup"),
}
# (sss key, URL user or None, file) read from C by the key's holder
PHASE1_SSS = [
    ("lena", None, "f4.root"),
    ("dana", "nobody", "f4.root"),  # spoof: the key's user wins
    ("any", None, "f5.root"),
]
# refused logins, by daemon: with LENA's keytab (unreadable to daemon), and with its own key in
# a keytab others may read (mode 0644)
SSS_REFUSED = {"stolen": "lena", "readable": "dana"}
UPLOAD = ("nobody", "A", "up.root", 1_048_577)
KILLED = ("daemon", "B", "big.root")
SLOW = (LONG, "A", "slow.root")
PHASE4 = [("daemon", None, "A", "f1.root")]
FACILITY, NODE = "af-test", "xrd-node"

CONFIG = """xrd.port {port}
xrd.network nodnr
all.role server
all.export /
oss.localroot {data}
all.adminpath {admin}
all.pidpath {run}
all.sitename TEST-AF
xrd.report 127.0.0.1:{summary},127.0.0.1:{recorder} every 1s all
xrootd.monitor all auth flush 1s window 1s fstat 1s lfn ops xfr 1 ident 5s dest fstat info user \
files 127.0.0.1:{detail}
{auth}
"""
SEC = "xrootd.seclib libXrdSec.so\nsec.protocol"
AUTH = {"A": f"{SEC} unix", "B": "", "C": f"{SEC} sss -s {{keytab}}"}


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def add_long_user(work: Path) -> None:
    """LONG exists in this mount namespace only: copies of passwd/group bind-mounted."""
    for name, line in (
        ("passwd", f"{LONG}:x:{LONG_UID}:{LONG_UID}::/nonexistent:/usr/sbin/nologin\n"),
        ("group", f"{LONG}:x:{LONG_UID}:\n"),
    ):
        copy = work / name
        copy.write_text(Path(f"/etc/{name}").read_text() + line)
        copy.chmod(0o644)
        subprocess.run(["mount", "--bind", str(copy), f"/etc/{name}"], check=True)


class Recorder:
    """xrootd's own record: the last `link in`/`out` of each server life (src, tos, pid)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", RECORDER_PORT))
        self.sock.settimeout(0.2)
        self.lives: dict[tuple[int, int, int], tuple[int, int, int]] = {}  # -> tod, in, out
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            s = xp.parse_summary(data)
            key = (s.port or 0, s.tos, int(s.pid))
            with self.lock:
                if s.tod >= self.lives.get(key, (0, 0, 0))[0]:
                    self.lives[key] = (s.tod, s.link_in or 0, s.link_out or 0)

    def link(self, port: int) -> tuple[int, int, int]:
        """(link in, link out, newest tod) summed over the server's lives."""
        with self.lock:
            lives = [v for k, v in self.lives.items() if k[0] == port]
        return sum(v[1] for v in lives), sum(v[2] for v in lives), max(v[0] for v in lives)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


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
            recorder=RECORDER_PORT,
            detail=DETAIL_PORT,
            auth=AUTH[name].format(keytab=base / "sss.keytab"),
        )
    )
    return subprocess.Popen(
        ["xrootd", "-c", str(cfg), "-l", str(base / "xrootd.log"), "-R", "xrootd", "-n", name],
        preexec_fn=_die_with_parent,
    )


def make_sss_keys(work: Path) -> dict[str, Path]:
    """Server C's keytab (one key per SSS_KEYS entry, the xrootd user's, mode 0600) and, per
    key, a keytab holding only that key, owned by its holder (mode 0600, as sss demands)."""
    keytab = work / "C" / "sss.keytab"
    for num, (key, (_holder, user, group)) in enumerate(SSS_KEYS.items(), 1):
        cmd = ["xrdsssadmin", "-n", str(num), "-k", key, "-u", user, "-g", group, "add"]
        subprocess.run([*cmd, str(keytab)], input="y\n", text=True, capture_output=True, check=True)
    lines = keytab.read_text().splitlines()  # one key a line: "0 u:USER g:GROUP n:NAME ..."
    shutil.chown(keytab, "xrootd", "xrootd")
    keytab.chmod(0o600)
    client = {}
    for key, (holder, _user, _group) in SSS_KEYS.items():
        d = work / f"sss-{key}"
        d.mkdir(mode=0o700)
        client[key] = d / "sss.keytab"
        client[key].write_text(next(ln for ln in lines if f" n:{key} " in ln) + "\n")
        client[key].chmod(0o600)
        for p in (d, client[key]):
            shutil.chown(p, holder, holder)
    return client


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def url(server: str, fname: str, as_user: str | None = None) -> str:
    who = f"{as_user}@" if as_user else ""
    return f"root://{who}127.0.0.1:{SERVERS[server]}//{fname}"


def xrdcp(
    user: str, src: str, dst: str, sss_keytab: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """xrdcp run as `user`; with `sss_keytab`, authenticating with sss and that keytab only
    (unchecked, its stderr is kept)."""
    env = None
    if sss_keytab is not None:
        env = dict(os.environ, XrdSecPROTOCOL="sss", XrdSecSSSKT=str(sss_keytab))
    return subprocess.run(
        ["runuser", "-u", user, "--", "xrdcp", "-s", "-f", src, dst],
        check=check,
        timeout=60,
        env=env,
        text=True,
        stderr=None if check else subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )


def slow_reader(
    user: str, src: str, delay: float, small_chunks: bool = False
) -> subprocess.Popen[bytes]:
    """xrdcp to a pipe that nobody reads for `delay` s: the file stays open meanwhile (with
    1 MiB chunks one at a time, the server completes, and reports, a few reads first)."""
    env = dict(os.environ)
    if small_chunks:
        env.update(XRD_CPCHUNKSIZE="1048576", XRD_CPPARALLELCHUNKS="1")
    cmd = f"runuser -u {user} -- xrdcp -s -f {src} - | (sleep {delay}; cat >/dev/null)"
    return subprocess.Popen(
        ["sh", "-c", cmd], env=env, start_new_session=True, preexec_fn=_die_with_parent
    )


def settled(monitor: Monitor, probe: XRootDProbe, rec: Recorder) -> bool:
    """No file or login open, and each server's last summary (in the probe and in the
    recorder alike) newer than everything the detailed stream reported."""
    with probe._lock:  # noqa: SLF001  (the helper reads the live state the probe guards)
        if any(st.files or st.users for st in monitor.streams.values()):
            return False
        now = time.time()
        for name, port in SERVERS.items():
            if not monitor.settled(LABEL[name], now):
                return False
            t = monitor.servers.get(LABEL[name])
            if t is None or (t.values["link_in"], t.values["link_out"]) != rec.link(port)[:2]:
                return False
        return True


def main(out_path: str) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = Path(tempfile.mkdtemp(prefix="afmon-xrootd-"))
    work.chmod(0o755)  # the clients run as other users
    add_long_user(work)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    state = work / "agent-state" / "xrootd-probe.json"
    state.parent.mkdir()

    def new_probe() -> XRootDProbe:
        m = Monitor(ROLES, default_role="remote")
        return XRootDProbe(
            NODE, m, summary_port=SUMMARY_PORT, detail_port=DETAIL_PORT, state_path=state
        )

    probe = new_probe()
    recorder = Recorder()
    out = open(out_path, "w")  # noqa: SIM115  (closed in finally)
    seq = 0

    def emit(**line: object) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    def batch(phase: str) -> None:
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
        emit(phase=phase, batch=json.loads(wire.encode(b)))

    def wait_settled(what: str) -> None:
        deadline = time.monotonic() + 30
        while not settled(probe.monitor, probe, recorder):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the probe did not settle after {what}")
            time.sleep(0.2)

    def wait_for(cond: Any, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)

    try:
        for name, files in FILES.items():
            for sub in ("data", "admin", "run"):
                (work / name / sub).mkdir(parents=True)
            for fname, size in files.items():
                (work / name / "data" / fname).write_bytes(os.urandom(size))
            for p in [work / name, *(work / name).rglob("*")]:
                shutil.chown(p, "xrootd", "xrootd")
        sss_keytab = make_sss_keys(work)
        upload = work / UPLOAD[2]
        upload.write_bytes(os.urandom(UPLOAD[3]))
        upload.chmod(0o644)
        probe.start()  # listening before the servers start: their whole life is seen
        for name in SERVERS:
            procs[name] = start_xrootd(work, name)
        time.sleep(0.5)

        # 1. reads (verified on A and C, asserted on B) and an upload
        for user, as_user, server, fname in PHASE1:
            xrdcp(user, url(server, fname, as_user), "/dev/null")
        for key, as_user, fname in PHASE1_SSS:
            xrdcp(SSS_KEYS[key][0], url("C", fname, as_user), "/dev/null", sss_keytab[key])
        readable = work / "sss-readable.keytab"
        shutil.copy(sss_keytab[SSS_REFUSED["readable"]], readable)
        shutil.chown(readable, "daemon", "daemon")
        readable.chmod(0o644)
        refused = {}
        for case, keytab in (("stolen", sss_keytab[SSS_REFUSED["stolen"]]), ("readable", readable)):
            r = xrdcp("daemon", url("C", "f4.root"), "/dev/null", keytab, check=False)
            refused[case] = {"rc": r.returncode, "stderr": r.stderr}
        emit(sss_refused=refused)
        user, server, fname, _size = UPLOAD
        xrdcp(user, str(upload), url(server, fname))
        wait_settled("phase 1")
        batch("reads")

        # 2. a transfer killed by the client once tens of MB are on the wire
        user, server, fname = KILLED
        out_before = recorder.link(SERVERS[server])[1]
        killed = slow_reader(user, url(server, fname), 30)
        wait_for(lambda: recorder.link(SERVERS[server])[1] - out_before > 20_000_000, "bytes")
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        wait_settled("the killed transfer")
        batch("killed")

        # 3. the agent restarts while a file is open
        user, server, fname = SLOW
        reader = slow_reader(user, url(server, fname), 6, small_chunks=True)
        lab = LABEL[server]

        def is_open() -> bool:
            with probe._lock:  # noqa: SLF001
                return any(st.files for st in probe.monitor.streams.values() if st.label == lab)

        wait_for(is_open, "the open record of the slow read")
        batch("before-restart")
        with probe._lock:  # noqa: SLF001
            before = {
                st.label: {fid: f.read for fid, f in st.files.items()}
                for st in probe.monitor.streams.values()
                if st.files
            }
        probe.close()  # the agent stops: checkpoint
        time.sleep(1.0)  # packets sent now are lost (nobody listens)
        probe = new_probe()  # the agent starts again: takes up the state
        probe.start()
        emit(restart={"open_files_counted": before})
        if reader.wait(timeout=60) != 0:
            raise RuntimeError("the slow reader failed")
        wait_settled("the agent restart")
        batch("after-restart")

        # 4. a server restart
        stop(procs["A"])
        procs["A"] = start_xrootd(work, "A")  # a new server life: new stod, pid, tos
        time.sleep(0.5)
        for user, as_user, server, fname in PHASE4:
            xrdcp(user, url(server, fname, as_user), "/dev/null")
        wait_settled("phase 4")
        batch("server-restart")
        emit(
            xrootd={
                LABEL[name]: dict(
                    zip(("link_in", "link_out"), recorder.link(port)[:2], strict=True)
                )
                for name, port in SERVERS.items()
            },
            disk={
                name: {p.name: p.stat().st_size for p in (work / name / "data").iterdir()}
                for name in SERVERS
            },
        )
        with probe._lock:  # noqa: SLF001
            m = probe.monitor
            emit(
                health={
                    "errors": dict(m.errors),
                    "seq": dict(m.seq),
                    "evicted": dict(m.evicted),
                    "packets": dict(m.packets),
                }
            )
        return 0
    finally:
        for proc in procs.values():
            stop(proc)
        probe.close()
        recorder.close()
        out.close()
        for name in ("passwd", "group"):
            subprocess.run(["umount", f"/etc/{name}"], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
