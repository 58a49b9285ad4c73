"""The XRootD probe against three real xrootd servers (Debian's xrootd-server, in a private
network and mount namespace; see tests/collectors/xrootd_netns.py), its batches posted through
the real ingest, compared with xrootd's own record: its summary stream's `link out`/`link in`
counters and the files' sizes on disk, to the byte.

Cases (issue 17): a 19-character user, authenticated (`sec.protocol unix` on A, `sss` on C:
mapped) and not (B: only 8 asserted characters, visible as such, unmapped); a login name spoofed
with `root://nobody@` (the authenticated name wins: the account's on A, the sss key's on C;
unauthenticated, it is marked asserted and never lands on nobody's member); an sss key of user
`anybody` (xrdcp sends `nobody`: verified as `nobody`, whoever ran it); an sss keytab another
account owns, or others may read (refused, nothing counted); an xrdcp upload (the payload, not
the pgwrite CRCs); a transfer killed by the client (close record read=0: the bytes are reported
unattributed, per server); an agent restart while a file is open (state checkpointed and taken
up: no byte counted twice or lost, none misattributed); and a server restart."""

from __future__ import annotations

import json
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
IDENTITY = f"""
[vos.atlas]
issuer = "https://atlas-auth.example.org/"
[vos.cms]
issuer = "https://cms-auth.example.org/"

[[members]]
vo = "atlas"
subject = "dana-sub"
display_name = "Dana"
accounts = [{{ facility = "af-test", local = "daemon" }}]

[[members]]
vo = "cms"
subject = "noah-sub"
display_name = "Noah"
accounts = [{{ facility = "af-test", local = "nobody" }}]

[[members]]
vo = "cms"
subject = "lena-sub"
display_name = "Lena"
accounts = [{{ facility = "af-test", local = "{netns.LONG}" }}]
"""
DANA = "https://atlas-auth.example.org/|dana-sub"
NOAH = "https://cms-auth.example.org/|noah-sub"
LENA = "https://cms-auth.example.org/|lena-sub"
UNMAPPED = "afmon:unmapped|af-test"
A, B, C = netns.LABEL["A"], netns.LABEL["B"], netns.LABEL["C"]
F = netns.FILES


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    for tool in ("xrootd", "xrdcp", "unshare", "ip", "runuser", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is missing: the XRootD tests need Debian's xrootd-server, "
                "xrootd-client, util-linux and iproute2 (make debs)"
            )
    out = tmp_path_factory.mktemp("xrootd") / "probe.jsonl"
    proc = subprocess.run(
        ["unshare", "-n", "-m", sys.executable, "-m", "tests.collectors.xrootd_netns", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"netns run failed:\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line) for line in out.read_text().splitlines()]


def one(run: list[dict[str, Any]], key: str) -> Any:
    return next(line[key] for line in run if key in line)


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
    assert len(batches) == 5  # from two agent lives
    for b in batches:
        body = msgspec.json.encode(b)
        wire.decode(body)  # a valid batch by the wire contract
        r = client.post(
            "/api/v1/ingest", content=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "applied"
    return client


def last_batch(run: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line["batch"] for line in run if "batch" in line][-1]["series"]


def server_values(run: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(metric, server, direction) -> value, from the last batch's server series."""
    return {
        (s["metric"], s["labels"]["server"], s["labels"].get("direction", "")): s["values"][-1]
        for s in last_batch(run)
        if "server" in s["labels"]
    }


def user_values(run: list[dict[str, Any]], metric: str) -> dict[tuple[str, ...], float]:
    """(user, identity, auth, source) -> value, from the last batch."""
    return {
        tuple(s["labels"][k] for k in ("user", "identity", "auth", "source")): s["values"][-1]
        for s in last_batch(run)
        if s["metric"] == metric and s["values"][-1]
    }


def test_identities_are_verified_or_visibly_asserted(run: list[dict[str, Any]]) -> None:
    long_cut = "asserted:" + netns.LONG[:8] + "*"
    assert user_values(run, "user_data_read_bytes") == {
        # server A authenticates (sec.protocol unix): the account's full name, even when the
        # URL asserts another (daemon read f2 as root://nobody@)
        ("daemon", "verified", "unix", "local"): 2 * F["A"]["f1.root"] + F["A"]["f2.root"],
        ("nobody", "verified", "unix", "local"): F["A"]["f2.root"],
        (netns.LONG, "verified", "unix", "local"): F["A"]["f1.root"] + F["A"]["slow.root"],
        # server B does not: 8 asserted characters, marked as such (and as possibly cut)
        ("asserted:nobody", "asserted", "none", "cache"): F["B"]["f3.root"],  # daemon's spoof
        (long_cut, "asserted", "none", "cache"): F["B"]["f3.root"],
        # server C authenticates with sss: the user of the client's key, in full; daemon's
        # root://nobody@ spoof with its own key is daemon's
        (netns.LONG, "verified", "sss", "local"): F["C"]["f4.root"],
        ("daemon", "verified", "sss", "local"): F["C"]["f4.root"],
        # an `anybody` key vouches for the name the client sends, and xrdcp 5.5 sends `nobody`
        # (not its account's): daemon's read is, verified, nobody's
        ("nobody", "verified", "sss", "local"): F["C"]["f5.root"],
    }


def test_sss_refuses_a_key_that_is_not_the_accounts_own(run: list[dict[str, Any]]) -> None:
    """The key is the identity: daemon cannot read LONG's keytab (0600, LONG's), and the client
    will not use a keytab others may read, so both logins fail (no `u` record, no open: nothing
    counted to anyone; the failed handshakes are C's unattributed protocol overhead)."""
    refused = one(run, "sss_refused")
    assert all(r["rc"] != 0 for r in refused.values()), refused
    assert "Auth failed" in refused["stolen"]["stderr"], refused
    assert "not secure" in refused["readable"]["stderr"], refused


def test_ledger_bytes_per_member_equal_the_file_sizes(
    ledger: TestClient, run: list[dict[str, Any]]
) -> None:
    q = ledger.app.state.services.query
    df = q.data_usage(LOCAL_ADMIN, 0, 4e9, by="member")
    got = {
        (r.member, r.source, r.via, r.direction): r.amount
        for r in df.itertuples(index=False)
        if r.amount
    }
    disk = one(run, "disk")
    assert disk["A"]["up.root"] == netns.UPLOAD[3]
    assert got == {
        # daemon's sss spoof (root://nobody@) on C is daemon's
        (DANA, "local", "xrootd", "read"): (
            2 * F["A"]["f1.root"] + F["A"]["f2.root"] + disk["C"]["f4.root"]
        ),
        # daemon's read with the `anybody` key lands on nobody's member: sss vouched `nobody`
        (NOAH, "local", "xrootd", "read"): F["A"]["f2.root"] + disk["C"]["f5.root"],
        (NOAH, "local", "xrootd", "written"): disk["A"]["up.root"],  # payload, not pgwrite CRCs
        # the long name resolves in full (unix on A, sss on C), and the open file across the
        # agent restart counts once, to its reader
        (LENA, "local", "xrootd", "read"): (
            F["A"]["f1.root"] + disk["A"]["slow.root"] + disk["C"]["f4.root"]
        ),
        # asserted names are never mapped: not to nobody's member, not by an 8-char prefix
        (UNMAPPED, "cache", "xrootd", "read"): 2 * F["B"]["f3.root"],
    }
    opened = q.usage_totals(LOCAL_ADMIN, 0, 4e9, by=("member",), resources=("data_files_opened",))
    assert dict(zip(opened["member"], opened["amount"], strict=True)) == {
        DANA: 4,
        NOAH: 3,
        LENA: 3,
        UNMAPPED: 3,  # two asserted reads and the killed transfer
    }
    # the bytes of asserted identities, flagged as unverified where they landed
    flagged = q.usage_totals(
        LOCAL_ADMIN, 0, 4e9, by=("member",), resources=("data_unverified_bytes",)
    )
    assert dict(zip(flagged["member"], flagged["amount"], strict=True)) == {
        UNMAPPED: 2 * F["B"]["f3.root"]
    }


def test_every_byte_on_the_servers_links_is_attributed_or_reported_unattributed(
    run: list[dict[str, Any]],
) -> None:
    v = server_values(run)
    xrootd = one(run, "xrootd")  # the servers' own link counters, summed over their lives
    for server in (A, B, C):
        assert v[("xrootd_server_link_out_bytes", server, "")] == xrootd[server]["link_out"]
        assert v[("xrootd_server_link_in_bytes", server, "")] == xrootd[server]["link_in"]
        out = v[("xrootd_server_read_bytes", server, "")]
        out += v[("xrootd_unattributed_bytes", server, "out")]
        assert out == xrootd[server]["link_out"]
        into = v[("xrootd_server_written_bytes", server, "")]
        into += v[("xrootd_unattributed_bytes", server, "in")]
        assert into == xrootd[server]["link_in"]
    # on A and C only protocol overhead (and the upload's pgwrite CRCs) is unattributed ...
    assert 0 < v[("xrootd_unattributed_bytes", A, "out")] <= 4096 * 7
    assert 0 < v[("xrootd_unattributed_bytes", C, "out")] <= 4096 * 7
    assert 0 < v[("xrootd_unattributed_bytes", C, "in")] <= 4096
    crcs = 4 * -(-netns.UPLOAD[3] // 4096)
    assert crcs < v[("xrootd_unattributed_bytes", A, "in")] <= crcs + 4096 * 7
    # ... on B the killed transfer's tens of MB, which its close record reports as 0
    assert user_values(run, "user_files_opened")[("asserted:daemon", "asserted", "none", "cache")]
    assert ("asserted:daemon", "asserted", "none", "cache") not in user_values(
        run, "user_data_read_bytes"
    )
    assert v[("xrootd_unattributed_bytes", B, "out")] > 20_000_000
    assert v[("xrootd_server_read_bytes", A, "")] == (
        3 * F["A"]["f1.root"] + 2 * F["A"]["f2.root"] + F["A"]["slow.root"]
    )
    assert v[("xrootd_server_read_bytes", C, "")] == 2 * F["C"]["f4.root"] + F["C"]["f5.root"]
    assert v[("xrootd_server_restarts", A, "")] == 1  # the restart was seen: a new tos and pid
    assert v[("xrootd_server_restarts", B, "")] == 0
    assert v[("xrootd_server_restarts", C, "")] == 0


def test_the_agent_restart_fell_on_an_open_file(run: list[dict[str, Any]]) -> None:
    counted = one(run, "restart")["open_files_counted"]
    assert list(counted) == [A] and len(counted[A]) == 1  # the slow read was open
    health = one(run, "health")
    assert health["errors"] == {} and health["evicted"] == {}
    assert health["seq"].get("duplicate", 0) == 0


def test_top_servers_query(ledger: TestClient) -> None:
    top = ledger.app.state.services.query.data_servers(LOCAL_ADMIN, 0, 4e9)
    assert top["server"].tolist() == [A, C, B]  # most bytes read first
    assert top["source"].tolist() == ["local", "local", "cache"]
    assert top["read_bytes"].tolist() == [
        3 * F["A"]["f1.root"] + 2 * F["A"]["f2.root"] + F["A"]["slow.root"],
        2 * F["C"]["f4.root"] + F["C"]["f5.root"],
        2 * F["B"]["f3.root"],
    ]
    assert top["restarts"].tolist() == [1, 0, 0]
    # through the ledger too: every byte on each server's links is a user's or unattributed
    assert (top["read_bytes"] + top["unattributed_out_bytes"]).tolist() == top[
        "link_out_bytes"
    ].tolist()
    assert (top["written_bytes"] + top["unattributed_in_bytes"]).tolist() == top[
        "link_in_bytes"
    ].tolist()
    assert top["unattributed_out_bytes"].iloc[2] > 20_000_000  # B's killed transfer
