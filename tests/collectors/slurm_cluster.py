"""A real single-node Slurm for the batch probe's tests, all in a temporary directory.

munged, slurmdbd (on the MariaDB at 127.0.0.1:3306, through its local socket, in a fresh
database), slurmctld and slurmd run inside a private network namespace held by a `sleep`
process, because the daemons bind 0.0.0.0. Client commands (sbatch, sacct, ...) run in the
same namespace through `nsenter`. Two throwaway local users own the jobs. Everything is
torn down in `stop()`, which is safe to call after a partial start.

`cred_expire=10` (default 120 s) is also how long a requeued job waits before it may run
again, and `bf_interval=5` lets the backfill scheduler start it soon after: a requeue test
then waits seconds, not minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = (
    "munged",
    "mungekey",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacct",
    "sacctmgr",
    "scancel",
    "scontrol",
    "sinfo",
    "squeue",
    "mysql",
    "unshare",
    "nsenter",
    "useradd",
    "userdel",
    "ip",
)
NODE = "afmon-n1"
CLUSTER = "afmontest"
PARTITION = "batch"
ACCOUNT = "physics"
MYSQL = ("mysql", "--protocol=socket", "-uroot")
END_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


class SlurmError(RuntimeError):
    pass


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


@dataclass
class SlurmCluster:
    """Start with `start()`, always `stop()`; `run()` runs a client command in the cluster."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="afmon-slurm-")))
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    users: tuple[str, str] = ("", "")
    database: str = ""
    ns: subprocess.Popen[bytes] | None = None
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _created_users: list[str] = field(default_factory=list)
    _db_created: bool = False

    def __post_init__(self) -> None:
        self.users = (f"afm{self.tag}a", f"afm{self.tag}b")
        self.database = f"slurm_acct_{self.tag}"
        self.root.chmod(0o755)  # job users must reach their working directory

    # -- client side -------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.root / "slurm.conf")}

    def nsenter(self) -> list[str]:
        assert self.ns is not None, "the cluster is not started"
        return ["nsenter", "-t", str(self.ns.pid), "-n"]

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        """Run a command inside the cluster's network namespace; its stdout."""
        proc = subprocess.run(
            [*self.nsenter(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def runner(self, argv: Sequence[str], env: dict[str, str]) -> str:
        """A command runner for the probe: runs `argv` in the namespace with `env` added."""
        proc = subprocess.run(
            [*self.nsenter(), *argv],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.env, **env},
        )
        if proc.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def submit(self, user: str, script: str, *options: str) -> str:
        """sbatch a shell script as `user`; the job id."""
        path = self.root / "jobs" / f"job-{uuid.uuid4().hex[:8]}.sh"
        path.write_text("#!/bin/bash\n" + script + "\n")
        path.chmod(0o755)
        out = self.run(
            "sbatch",
            "--parsable",
            f"--uid={user}",
            f"--account={ACCOUNT}",
            f"--chdir={self.root / 'jobs'}",
            "--output=/dev/null",
            *options,
            str(path),
        )
        return out.strip().split(";")[0]

    def states(self) -> dict[str, str]:
        """JobID -> State of every allocation that sacct knows."""
        out = self.run("sacct", "-X", "-P", "-n", "-a", "--format=JobID,State", "-S", "now-1hour")
        return {
            line.split("|")[0]: line.split("|")[1].split()[0]
            for line in out.splitlines()
            if line.strip()
        }

    def queue(self) -> str:
        """squeue's lines for every job still pending or running (empty: none)."""
        return self.run("squeue", "-h", "-a").strip()

    def wait_for(self, predicate: str, timeout: float = 60) -> dict[str, str]:
        """Wait until every job is in an end state ("done") or any job runs ("running")."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.states()
            if predicate == "done" and states and set(states.values()) <= END_STATES:
                if not self.queue():
                    return states
            time.sleep(0.5)
        raise SlurmError(
            f"jobs did not reach {predicate!r} in {timeout} s: {states}\n" + self.logs()
        )

    def logs(self) -> str:
        parts = []
        for name in ("slurmdbd.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                parts.append(
                    f"--- {name} (tail)\n" + "\n".join(path.read_text().splitlines()[-15:])
                )
        return "\n".join(parts)

    # -- start and stop ----------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        missing = missing_binaries()
        if missing:
            raise SlurmError(
                f"missing {', '.join(missing)}: the Slurm tests need Debian's munge slurmctld "
                "slurmd slurm-client slurmdbd, MariaDB and iproute2"
            )
        (self.root / "jobs").mkdir(mode=0o777)
        (self.root / "jobs").chmod(0o1777)
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir()
        (self.root / "munge").chmod(0o755)  # the socket's directory must be world-executable
        self._add_users()
        self._create_database()
        self._start_namespace()
        self._start_munge()
        self._write_configs()
        deadline = time.monotonic() + timeout
        self._daemon("slurmdbd", "-D")
        self._until(deadline, "slurmdbd answers", self._dbd_up)
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={CLUSTER}")
        for user in self.users:
            self.run(
                "sacctmgr", "-i", "add", "user", user, f"account={ACCOUNT}", f"cluster={CLUSTER}"
            )
        self._daemon("slurmctld", "-D", "-i")
        self._daemon("slurmd", "-D", "-N", NODE)
        self._until(deadline, "the node is idle", self._node_idle)

    def _dbd_up(self) -> bool:
        probe = subprocess.run(
            [*self.nsenter(), "sacctmgr", "-n", "-P", "list", "cluster"],
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, **self.env},
        )
        return probe.returncode == 0

    def _node_idle(self) -> bool:
        return self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).strip() == "idle"

    def _until(self, deadline: float, what: str, ready: object) -> None:
        while time.monotonic() < deadline:
            for d in self.daemons:
                if d.poll() is not None:
                    raise SlurmError(
                        f"{d.args[len(self.nsenter())]} exited with "
                        f"{d.returncode} before {what}\n" + self.logs()
                    )
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.25)
        raise SlurmError(f"timed out waiting until {what}\n" + self.logs())

    def _add_users(self) -> None:
        for user in self.users:
            proc = subprocess.run(
                ["useradd", "-M", "-N", "-s", "/bin/bash", "-d", str(self.root), user],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SlurmError(f"useradd {user} failed: {proc.stderr.strip()}")
            self._created_users.append(user)

    def _create_database(self) -> None:
        proc = subprocess.run(
            [*MYSQL, "-e", f"CREATE DATABASE {self.database}"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise SlurmError(
                f"MariaDB (local socket, root) is needed for slurmdbd: {proc.stderr.strip()}"
            )
        self._db_created = True

    def _start_namespace(self) -> None:
        self.ns = subprocess.Popen(
            [
                "unshare",
                "-n",
                "sh",
                "-c",
                "ip link set lo up && ip addr add 10.254.254.1/32 dev lo && exec sleep infinity",
            ],
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                [*self.nsenter(), "ip", "-o", "addr", "show", "dev", "lo"],
                capture_output=True,
                text=True,
            ).stdout
            if "10.254.254.1" in out:
                return
            if self.ns.poll() is not None:
                break
            time.sleep(0.05)
        raise SlurmError("could not set up a network namespace (unshare -n needs root)")

    def _start_munge(self) -> None:
        r = self.root / "munge"
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={r / 'munge.key'}"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "munged",
                "--force",
                f"--key-file={r / 'munge.key'}",
                f"--socket={r / 'sock'}",
                f"--pid-file={r / 'munged.pid'}",
                f"--log-file={r / 'munged.log'}",
                f"--seed-file={r / 'seed'}",
            ],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 10
        while not (r / "sock").exists():
            if time.monotonic() > deadline:
                raise SlurmError("munged did not create its socket")
            time.sleep(0.05)

    def _write_configs(self) -> None:
        r = self.root
        sock = r / "munge" / "sock"
        (r / "slurmdbd.conf").write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc={self.database}
PidFile={r}/slurmdbd.pid
LogFile={r}/slurmdbd.log
""")
        (r / "slurmdbd.conf").chmod(0o600)
        (r / "slurm.conf").write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=10
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobCompType=jobcomp/filetxt
JobCompLoc={r}/jobcomp.txt
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass={sock}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
DefMemPerCPU=500
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
MinJobAge=2
KillWait=2
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _daemon(self, *argv: str) -> None:
        log = (self.root / f"{argv[0]}.out").open("ab")
        proc = subprocess.Popen(
            [*self.nsenter(), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        self.daemons.append(proc)

    def stop(self) -> None:
        """Stop everything that was started, in reverse order; never raises."""
        for proc in reversed(self.daemons):
            _terminate(proc)
        pid_file = self.root / "munge" / "munged.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
        if self.ns is not None:
            _terminate(self.ns)
        if self._db_created:
            subprocess.run(
                [*MYSQL, "-e", f"DROP DATABASE IF EXISTS {self.database}"], capture_output=True
            )
        for user in self._created_users:
            subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
