"""The XRootD probe against two real xrootd servers (Debian's xrootd-server, in a private
network namespace; see tests/collectors/xrootd_netns.py), its batches posted through the real
ingest: the ledger's bytes per member equal the bytes `xrdcp` moved, exactly."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.collectors import xrootd_netns as netns

REPO = Path(__file__).resolve().parents[2]
TOKEN = "xrootd-test-token"
IDENTITY = """
[vos.atlas]
issuer = "https://atlas-auth.example.org/"
[vos.cms]
issuer = "https://cms-auth.example.org/"

[[members]]
vo = "atlas"
subject = "dana-sub"
display_name = "Dana"
accounts = [{ facility = "af-test", local = "daemon" }]

[[members]]
vo = "cms"
subject = "noah-sub"
display_name = "Noah"
accounts = [{ facility = "af-test", local = "nobody" }]
"""
DANA = "https://atlas-auth.example.org/|dana-sub"
NOAH = "https://cms-auth.example.org/|noah-sub"
A, B = "127.0.0.1:21094", "127.0.0.1:21095"


def pgwrite_bytes(size: int) -> int:
    """xrdcp uploads with kXR_pgwrite: the server counts a 4-byte CRC32c per 4 KiB page."""
    return size + 4 * math.ceil(size / 4096)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    for tool in ("xrootd", "xrdcp", "unshare", "ip", "runuser"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is missing: the XRootD tests need Debian's xrootd-server, "
                "xrootd-client, util-linux and iproute2 (make debs)"
            )
    out = tmp_path_factory.mktemp("xrootd") / "probe.jsonl"
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.collectors.xrootd_netns", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"netns run failed:\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def ledger(run: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    tmp = tmp_path_factory.mktemp("xrootd-ledger")
    (tmp / "identity.toml").write_text(IDENTITY)
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/afmon.sqlite",
        facility_tokens={netns.FACILITY: TOKEN},
        identity_file=tmp / "identity.toml",
    )
    client = TestClient(create_app(settings, with_dashboard=False))
    batches = [line["batch"] for line in run if "batch" in line]
    assert len(batches) == 2
    for b in batches:
        body = msgspec.json.encode(b)
        wire.decode(body)  # a valid batch by the wire contract
        r = client.post(
            "/api/v1/ingest", content=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "applied"
    return client


def last_values(run: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(metric, server) -> value, from the last batch's server series."""
    last = [line["batch"] for line in run if "batch" in line][-1]
    return {
        (s["metric"], s["labels"]["server"]): s["values"][-1]
        for s in last["series"]
        if "server" in s["labels"]
    }


def test_ledger_bytes_per_member_equal_the_bytes_xrdcp_moved(ledger: TestClient) -> None:
    q = ledger.app.state.services.query
    df = q.data_usage(LOCAL_ADMIN, 0, 4e9, by="member")
    got = {
        (r.member, r.source, r.via, r.direction): r.amount
        for r in df.itertuples(index=False)
        if r.amount
    }
    f = netns.FILES
    assert got == {
        # daemon read f1 from A (local) before and after A's restart, and f3 from B (cache)
        (DANA, "local", "xrootd", "read"): 2 * f["A"]["f1.root"],
        (DANA, "cache", "xrootd", "read"): f["B"]["f3.root"],
        (NOAH, "local", "xrootd", "read"): f["A"]["f2.root"],
        (NOAH, "cache", "xrootd", "written"): pgwrite_bytes(netns.UPLOAD[3]),
    }
    opened = q.usage_totals(LOCAL_ADMIN, 0, 4e9, by=("member",), resources=("data_files_opened",))
    assert dict(zip(opened["member"], opened["amount"], strict=True)) == {DANA: 3, NOAH: 2}
    by_vo = q.data_usage(LOCAL_ADMIN, 0, 4e9, by="vo").groupby("vo")["amount"].sum().to_dict()
    assert by_vo["atlas"] == 2 * f["A"]["f1.root"] + f["B"]["f3.root"]
    assert by_vo["cms"] == f["A"]["f2.root"] + pgwrite_bytes(netns.UPLOAD[3])


def test_summary_stream_totals_agree_with_the_detailed_stream(run: list[dict[str, Any]]) -> None:
    v = last_values(run)
    for server, files in ((A, 3), (B, 2)):
        assert v[("xrootd_server_files_opened", server)] == files
        assert v[("xrootd_server_opens", server)] == files  # the summary's open operations
        overhead = (
            v[("xrootd_server_link_out_bytes", server)] - v[("xrootd_server_read_bytes", server)]
        )
        assert 0 <= overhead <= 4096 * files, f"{server}: {overhead} bytes of protocol overhead"
    assert v[("xrootd_server_read_bytes", A)] == 2 * 3_000_017 + 1_234_567
    assert v[("xrootd_server_written_bytes", B)] == pgwrite_bytes(netns.UPLOAD[3])
    assert 0 <= v[("xrootd_server_link_in_bytes", B)] - pgwrite_bytes(netns.UPLOAD[3]) <= 8192
    assert v[("xrootd_server_restarts", A)] == 1  # the restart was seen: a new tos and pid
    assert v[("xrootd_server_restarts", B)] == 0


def test_top_servers_query_and_a_clean_run(ledger: TestClient, run: list[dict[str, Any]]) -> None:
    top = ledger.app.state.services.query.data_servers(LOCAL_ADMIN, 0, 4e9)
    assert top["server"].tolist() == [A, B]  # most bytes read first
    assert top["source"].tolist() == ["local", "cache"]
    assert top["read_bytes"].tolist() == [2 * 3_000_017 + 1_234_567, 777_777]
    assert top["restarts"].tolist() == [1, 0]
    health = run[-1]["health"]
    assert health["errors"] == {} and health["evicted"] == {}
    assert health["seq"].get("lost", 0) == 0 and health["seq"].get("duplicate", 0) == 0
