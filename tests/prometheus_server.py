"""A real Prometheus for tests: started with a scrape config on 127.0.0.1 and a free port,
its data in a temp dir, stopped (and its log closed) on exit."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port


@dataclass
class Prometheus:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]

    def alive(self) -> None:
        """Fail with the end of its log if it exited."""
        assert self.proc.poll() is None, self.log.read_text()[-2000:]


@contextmanager
def running_prometheus(tmp_path: Path, config: dict[str, Any]) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield Prometheus(f"http://127.0.0.1:{port}", log_path, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
