"""A real JupyterHub for tests: DummyAuthenticator, SimpleLocalProcessSpawner, npm's
configurable-http-proxy (installed once under .cache/npm-chp), 127.0.0.1 and free ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from afmon.collectors.probes.jupyterhub import HubTotals, parse_hub_metrics
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CHP_DIR = ROOT / ".cache" / "npm-chp"
CHP = CHP_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
TOKEN = "afmon-service-token-0123456789"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "mallory")
FAILING_USER = "mallory"  # its server never answers: a real spawn timeout (after 3 s)
FAIL_MESSAGE = "didn't respond in 3 seconds"
INSTANT_FAILURE_USER = "erin"  # Spawner.start raises at once
INSTANT_FAILURE_MESSAGE = "erin has no quota left"
START_TIMEOUT_USER = "frank"  # Spawner.start never returns: Spawner.start_timeout (2 s)
SLOW_USER = "grace"  # Spawner.start takes 4.5 s more than usual (about 6 s in all)

CONFIG = """
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{work}/cookie_secret"
c.JupyterHub.pid_file = "{work}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
import asyncio
from jupyterhub.spawner import SimpleLocalProcessSpawner


class TestSpawner(SimpleLocalProcessSpawner):
    async def start(self):
        if self.user.name == {instant!r}:
            raise RuntimeError({instant_message!r})
        if self.user.name == {start_timeout!r}:
            await asyncio.sleep(60)
        if self.user.name == {slow!r}:
            await asyncio.sleep(4.5)
        return await super().start()


c.JupyterHub.spawner_class = TestSpawner
c.TestSpawner.home_dir_template = "{work}/home/{{username}}"
c.Spawner.ip = "127.0.0.1"
c.Spawner.args = ["--allow-root"]
c.Spawner.default_url = "/tree"
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.services = [{{"name": "afmon", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "afmon-probe",
    "scopes": ["list:users", "read:users", "read:servers", "servers", "admin:users",
               "read:metrics", "access:servers"],
    "services": ["afmon"],
}}]

def _hook(spawner):
    if spawner.user.name == {failing!r}:
        spawner.cmd = ["sleep", "60"]
        spawner.http_timeout = 3
    if spawner.user.name == {start_timeout!r}:
        spawner.start_timeout = 2

c.Spawner.pre_spawn_hook = _hook
"""


@dataclass
class Hub:
    url: str
    token: str
    work: Path
    proc: subprocess.Popen[bytes]
    client: httpx.Client

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self.client.request(method, f"{self.url}/hub/api{path}", **kw)

    def totals(self) -> HubTotals:
        """The hub's own cumulative measurements: successes (spawn + proxy add) and failed
        starts (statuses failure and error)."""
        r = self.client.get(f"{self.url}/hub/metrics")
        r.raise_for_status()
        return parse_hub_metrics(r.text)

    def start_server(self, user: str, options: dict[str, Any] | None = None) -> None:
        r = self.api("POST", f"/users/{user}/server", json=options or {})
        assert r.status_code in (201, 202), r.text

    def stop_server(self, user: str) -> None:
        r = self.api("DELETE", f"/users/{user}/server")
        assert r.status_code in (202, 204), r.text

    def server(self, user: str) -> dict[str, Any] | None:
        return (self.api("GET", f"/users/{user}").json().get("servers") or {}).get("")

    def wait(self, user: str, what: str, timeout: float = 45.0) -> None:
        """Wait until the user's server is "ready" or "gone", polling every 50 ms."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.server(user)
            if (what == "ready" and s and s["ready"]) or (what == "gone" and not s):
                return
            time.sleep(0.05)
        raise AssertionError(f"{user}'s server never became {what}: {self.log()[-3000:]}")

    def log(self) -> str:
        return (self.work / "hub.log").read_text(errors="replace")


def ensure_proxy() -> Path:
    """configurable-http-proxy from npm, installed once under .cache/npm-chp."""
    if CHP.exists():
        return CHP
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is missing: the JupyterHub tests need Node.js and npm (apt-get install npm)"
        )
    out = subprocess.run(
        [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(CHP_DIR),
            "configurable-http-proxy",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0 or not CHP.exists():
        pytest.fail(f"npm install configurable-http-proxy failed: {out.stderr[-2000:]}")
    return CHP


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the hub stops its proxy and servers on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # anything left in the hub's process group (proxy, single-user servers)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def jupyterhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A running hub (API up); stopped with SIGTERM, its process group cleaned up."""
    if shutil.which("jupyterhub", path=str(Path(sys.executable).parent)) is None:
        pytest.fail(
            "jupyterhub is not installed in this environment (pip install jupyterhub "
            "jupyterlab, or the [test] extra)"
        )
    chp = ensure_proxy()
    work = tmp_path_factory.mktemp("hub")
    proxy_port, hub_port, api_port = free_port(), free_port(), free_port()
    (work / "jupyterhub_config.py").write_text(
        textwrap.dedent(
            CONFIG.format(
                proxy_port=proxy_port,
                hub_port=hub_port,
                api_port=api_port,
                chp=str(chp),
                work=work,
                users=set(USERS),
                token=TOKEN,
                failing=FAILING_USER,
                instant=INSTANT_FAILURE_USER,
                instant_message=INSTANT_FAILURE_MESSAGE,
                start_timeout=START_TIMEOUT_USER,
                slow=SLOW_USER,
            )
        )
    )
    for user in USERS:
        (work / "home" / user).mkdir(parents=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with (work / "hub.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "jupyterhub"),
                "-f",
                str(work / "jupyterhub_config.py"),
            ],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{proxy_port}"
    client = httpx.Client(headers={"Authorization": f"token {TOKEN}"}, timeout=10)
    hub = Hub(url, TOKEN, work, proc, client)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyterhub exited: {hub.log()[-3000:]}")
            try:
                if client.get(f"{url}/hub/api/").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyterhub API not up in 60 s: {hub.log()[-3000:]}")
            time.sleep(0.1)
        yield hub
    finally:
        client.close()
        _stop(proc)
