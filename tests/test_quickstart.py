"""docs/quickstart.md's deployment, executed: its ```bash blocks run in order, in one shell, in
the checkout, as a stranger would run them, and end with a signed-in member reading what a
real agent measured.

What the test substitutes, only through the variables the page itself reads:

- its names: a free AFMON_PORT, a fresh PostgreSQL role and database (AFMON_DB_NAME, created
  by the page's own `psql ... CREATE ROLE/DATABASE`, dropped here afterwards), a temporary
  AFMON_CONF_DIR and agent spool (AFMON_SPOOL_DIR);
- the install: AFMON_VENV is this test environment's virtualenv, which already holds afmon, so
  the page's install block skips its `pip install` (installing from wheels is tested in
  tests/test_wheel.py);
- the VO's IAM: a local OIDC issuer (tests/oidc_issuer.py) is AFMON_VO_ISSUER, its client the
  dashboard's, and a stand-in `oidc-token` on PATH prints the issuer's token for the person
  running the test, as oidc-agent would print one from the real IAM;
- AFMON_MIN_UID=0 when the suite runs as root, so the agent measures the account that runs it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.oidc_issuer import Issuer, IssuerServer

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"
AUDIENCE = "https://afmon.quickstart.test"
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"]

pytestmark = pytest.mark.postgres


def bash_blocks(markdown: str) -> list[str]:
    """The ```bash blocks, in order; ```sh, ```ini and others are for reading only."""
    return re.findall(r"^```bash\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def test_the_page_has_its_steps_as_bash_blocks() -> None:
    blocks = bash_blocks(QUICKSTART.read_text())
    text = "\n".join(blocks)
    for step in ('install ".[server]"', "CREATE ROLE", "CREATE DATABASE", "afmon serve",
                 "afmon-agent --once", "oidc-token", "/api/v1/usage"):  # fmt: skip
        assert step in text, step
    assert "make demo" not in text  # the demo runs until Ctrl-C: not part of the executed page


@pytest.fixture
def database() -> Iterator[str]:
    """A role and database name the page creates itself; both dropped afterwards."""
    name = f"afmon_qs_{uuid.uuid4().hex[:10]}"
    yield name
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{name}"'):
        subprocess.run([*PSQL, sql], capture_output=True, timeout=60)


def test_the_quickstart_runs_and_a_signed_in_member_sees_the_agents_data(
    tmp_path: Path, database: str
) -> None:
    # else the page's install block would install into this test environment
    assert (Path(sys.prefix) / "bin" / "afmon").exists(), "run the tests in afmon's virtualenv"
    subject = f"{uuid.uuid4()}"  # an IAM subject is an opaque id, not the login name
    issuer = Issuer("atlas", AUDIENCE, {subject: ["/atlas"]}, client_id="afmon-dashboard")
    port = free_port()
    with IssuerServer(free_port(), [issuer]):
        # oidc-agent's `oidc-token`, played by a script that prints the local issuer's token
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        token = issuer.token(subject, ["/atlas"])
        (bin_dir / "oidc-token").write_text(f"#!/bin/sh\necho '{token}'\n")
        (bin_dir / "oidc-token").chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
        env.update(
            PATH=f"{bin_dir}:{env['PATH']}",
            AFMON_PORT=str(port),
            AFMON_VENV=sys.prefix,  # the virtualenv running this test: afmon is installed there
            AFMON_CONF_DIR=str(tmp_path / "etc"),
            AFMON_DB_NAME=database,
            AFMON_VO="atlas",
            AFMON_VO_ISSUER=issuer.url,
            AFMON_OIDC_AUDIENCE=AUDIENCE,
            AFMON_OIDC_CLIENT_ID=issuer.client_id,
            AFMON_OIDC_CLIENT_SECRET=issuer.client_secret,
            AFMON_SPOOL_DIR=str(tmp_path / "spool"),
            AFMON_MIN_UID=str(min(1000, os.getuid())),
        )
        script = tmp_path / "quickstart.sh"
        blocks = bash_blocks(QUICKSTART.read_text())
        script.write_text("set -euo pipefail\n" + "\n".join(blocks))
        log = tmp_path / "quickstart.log"
        with log.open("wb") as out:
            # its own session: the server it starts in the background is stopped with it
            shell = subprocess.Popen(["bash", str(script)], cwd=ROOT, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            try:
                rc = shell.wait(timeout=300)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the quickstart did not finish in 300 s:\n{log.read_text()[-5000:]}")
            output = log.read_text()
            assert rc == 0, output[-5000:]
            url = f"http://127.0.0.1:{port}"
            member = f"{issuer.url}|{subject}"
            assert f'"member":"{member}"' in output  # the page's own last curl

            # the reader, with the issuer's token: their own usage, measured by the real agent
            r = httpx.get(f"{url}/api/v1/usage",
                          params={"start": 0, "end": time.time() + 3600, "by": "member"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
            rows = r.json()
            assert {row["member"] for row in rows} == {member}
            cpu = [row["amount"] for row in rows if row["resource"] == "cpu_seconds"]
            assert cpu and cpu[0] > 0, rows
            assert httpx.get(f"{url}/api/v1/usage", params={"start": 0, "end": 1},
                             timeout=30).status_code == 401  # fmt: skip

            # the dashboard's sign-in, through the issuer and back, sees the same
            with closing(httpx.Client(follow_redirects=True, timeout=30)) as browser:
                r = browser.get(f"{url}/auth/login",
                                params={"issuer": issuer.url, "login_hint": subject})  # fmt: skip
                assert r.status_code == 200 and str(r.url) == f"{url}/", r.text
                r = browser.get(
                    f"{url}/api/v1/usage",
                    params={"start": 0, "end": time.time() + 3600, "by": "member"},
                )
                assert r.status_code == 200, r.text
                assert {row["member"] for row in r.json()} == {member}
        finally:
            try:
                os.killpg(shell.pid, signal.SIGTERM)  # the page's `afmon serve &`
            except ProcessLookupError:
                pass
