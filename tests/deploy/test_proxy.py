"""deploy/proxy/nginx-afmon.conf really fronts afmon: a real nginx with a certificate made
here terminates TLS in front of a real `afmon serve`; health, redirect to https, an agent's
batch with its bearer token, and the forwarded scheme all get through."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from afmon.collectors.simulator import FacilitySimulator, Poster
from tests.conftest import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "deploy" / "proxy" / "nginx-afmon.conf"


def tool(name: str, package: str) -> str:
    """The program, or a failure that says how to get it (never a silent skip)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is needed for the proxy test: install Debian's `{package}` "
                    "(`make debs` does)")
    return found


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day."""
    cert, key = tmp / "fullchain.pem", tmp / "privkey.pem"
    subprocess.run(
        [tool("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=120,
    )
    return cert, key


def site_config(upstream_port: int, http_port: int, https_port: int, cert: Path,
                key: Path) -> str:
    """The shipped site file with this test's ports and certificate (and IPv4 only)."""
    text = SITE.read_text()
    for old, new in [
        ("server 127.0.0.1:8600;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("/etc/ssl/afmon/fullchain.pem", str(cert)),
        ("/etc/ssl/afmon/privkey.pem", str(key)),
    ]:
        assert old in text, f"{SITE.name} no longer has {old!r}"
        text = text.replace(old, new)
    return "\n".join(line for line in text.splitlines() if "listen [::]" not in line)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nginx did not listen in 60 s: {log.read_text()[-3000:]}")


@pytest.fixture
def proxied(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> Iterator[tuple[ServerProcess, str, str, Path]]:
    """(server, https URL, http URL, CA file): nginx with the shipped site in front of afmon."""
    nginx = tool("nginx", "nginx-light")
    server = server_factory(dashboard="false")
    cert, key = self_signed(tmp_path)
    http_port, https_port = free_port(), free_port()
    upstream_port = int(server.url.rsplit(":", 1)[1])
    (tmp_path / "site.conf").write_text(
        site_config(upstream_port, http_port, https_port, cert, key)
    )
    temp = "".join(f"{k}_temp_path {tmp_path}/{k};\n" for k in
                   ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\naccess_log {tmp_path}/access.log;\n{temp}include {tmp_path}/site.conf;\n}}\n"
    )
    log = tmp_path / "error.log"
    check = subprocess.run([nginx, "-t", "-c", str(main), "-e", str(log)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # nginx -t: the syntax and the certificate
    proc = subprocess.Popen([nginx, "-c", str(main), "-e", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(https_port, proc, log)
        yield server, f"https://127.0.0.1:{https_port}", f"http://127.0.0.1:{http_port}", cert
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_healthz_through_tls(proxied: tuple[ServerProcess, str, str, Path]) -> None:
    _, https, _, ca = proxied
    r = httpx.get(f"{https}/healthz", verify=ssl.create_default_context(cafile=ca), timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["strict-transport-security"].startswith("max-age=")
    assert r.headers["x-content-type-options"] == "nosniff"  # afmon's own, passed through
    assert r.http_version in ("HTTP/1.1", "HTTP/2")


def test_plain_http_is_sent_to_https(proxied: tuple[ServerProcess, str, str, Path]) -> None:
    _, https, http, _ = proxied
    r = httpx.get(f"{http}/healthz", timeout=30)
    assert r.status_code == 301
    assert r.headers["location"].startswith("https://") and r.headers["location"].endswith(
        "/healthz"
    )


def test_an_agent_batch_goes_through_with_its_token(
    proxied: tuple[ServerProcess, str, str, Path],
) -> None:
    server, https, _, ca = proxied
    sim = FacilitySimulator(facility=server.facility, nodes=1, members_per_vo=1, seed=3)
    end = time.time() // 3600 * 3600
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=60) as client:
        poster = Poster(https, server.token, client)
        results = [poster.post(b) for b in sim.batches(end - 1800, end)]
        assert results and all(r["status"] in ("applied", "partial") for r in results)
        bad = client.post(f"{https}/api/v1/ingest", content=b"{}",
                          headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401  # afmon's answer, not the proxy's


def test_afmon_sees_the_https_scheme(proxied: tuple[ServerProcess, str, str, Path]) -> None:
    """X-Forwarded-Proto reaches afmon and is believed (the proxy is 127.0.0.1): a redirect
    afmon builds from the request's own URL points at https, not at its plain HTTP port."""
    _, https, _, ca = proxied
    tls = ssl.create_default_context(cafile=ca)
    r = httpx.get(f"{https}/api/v1/usage/", verify=tls, timeout=30)
    assert r.status_code in (307, 308), (r.status_code, r.text[:300])
    assert r.headers["location"].startswith(https), r.headers["location"]
