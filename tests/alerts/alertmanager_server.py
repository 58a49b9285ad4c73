"""A real Alertmanager for tests: Debian's prometheus-alertmanager on 127.0.0.1 and a free
port, clustering off, its state in a temp dir, stopped (and its log closed) on exit."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port

NULL_CONFIG: dict[str, Any] = {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}


@dataclass
class Alertmanager:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def alive(self) -> None:
        """Fail with the end of its log if it exited."""
        assert self.proc.poll() is None, self.log.read_text()[-2000:]

    def alerts(self) -> list[dict[str, Any]]:
        """GET /api/v2/alerts (active, silenced and inhibited ones)."""
        r = httpx.get(f"{self.url}/api/v2/alerts", timeout=10)
        r.raise_for_status()
        return r.json()


def binary() -> str:
    """The Alertmanager binary; a missing one fails the test (never skips it)."""
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert found, (
        "Alertmanager is missing: `make test` installs Debian's prometheus-alertmanager package"
    )
    return found


@contextmanager
def running_alertmanager(
    tmp_path: Path, config: dict[str, Any] | None = None, timeout: float = 60.0
) -> Iterator[Alertmanager]:
    exe = binary()
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config or NULL_CONFIG))
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [exe, f"--config.file={config_file}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            am = Alertmanager(f"http://127.0.0.1:{port}", log_path, proc)
            deadline = time.monotonic() + timeout
            while True:  # any answer but 200 (or none yet) means: not ready yet
                am.alive()
                try:
                    if httpx.get(f"{am.url}/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"Alertmanager not ready in {timeout} s"
                time.sleep(0.2)
            yield am
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
