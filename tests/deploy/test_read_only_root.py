"""The server Deployment's readOnlyRootFilesystem and dropped capabilities hold: `afmon serve`
on PostgreSQL runs with every filesystem read-only but a fresh /tmp (the manifest's emptyDir)
and no capability, and serves /readyz, the dashboard and the API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("as_root")  # processes of other uids, caps, mounts

# In a private mount namespace (nothing changes outside it): a fresh tmpfs as the server's
# TMPDIR (the manifest's emptyDir on /tmp; mounted on a directory of the test's own, so that a
# checkout under /tmp stays visible), every other mount remounted read-only, then afmon serve
# with no capability at all.
SCRIPT = r"""
set -e
mount --make-rprivate /
mount -t tmpfs tmpfs "$AFMON_SCRATCH"
export TMPDIR="$AFMON_SCRATCH"
mount -o remount,bind,ro / 2>/dev/null || true
for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
  case "$m" in "$AFMON_SCRATCH"|/proc*|/sys*|/dev*) continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || true
done
if touch "$AFMON_PROBE_FILE" 2>/dev/null; then echo "still writable" >&2; exit 3; fi
cd /
exec setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --no-new-privs -- "$@"
"""


def test_server_runs_on_a_read_only_root_without_capabilities(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AFMON_HOST": "127.0.0.1",
        "AFMON_PORT": str(port),
        "AFMON_DATABASE_URL": pg_url,
        "AFMON_LOCAL_MODE": "true",
        "AFMON_LOG_LEVEL": "warning",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AFMON_PROBE_FILE": str(Path(sys.executable).parent / "afmon-ro-probe"),
        "AFMON_SCRATCH": str(tmp_path / "scratch"),
    }
    (tmp_path / "scratch").mkdir()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", SCRIPT, "sh",
             str(Path(sys.executable).parent / "afmon"), "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert httpx.get(f"{base}/", timeout=60).status_code == 200  # the dashboard
        usage = httpx.get(f"{base}/api/v1/usage",
                          params={"start": 0, "end": 2_000_000_000, "by": "member"}, timeout=60)
        assert usage.status_code == 200, usage.text
        assert "Read-only file system" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
