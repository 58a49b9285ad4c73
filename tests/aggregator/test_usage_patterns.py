"""Failure rates, access methods and input data formats (docs/data.md), end to end: wire
batches through the real ingest into the ledger and the event records, read back through the
query layer and the /api/v1 routes with tokens of a real local OIDC issuer (a member sees
only their own rows, the VO's manager the VO)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityError, parse_identity_file
from afmon.aggregator.query import access, failures, formats
from afmon.aggregator.query.base import LOCAL_ADMIN, Principal
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.aggregator.test_batch_accounting import AUD, IDENTITY, TOKEN, Poster
from tests.conftest import free_port
from tests.oidc_issuer import Issuer, IssuerServer

H = 1_795_597_200  # 2026-11-25T09:00:00Z, a Wednesday of ISO week 2026-W48
WINDOW = (H - 3600.0, H + 6 * 3600.0)
DAVE = """
[[members]]
vo = "atlas"
subject = "dave"
display_name = "Dave"
institution = "Uni Example"
accounts = [{ facility = "af", local = "dave" }]
"""
GB = 1e9


def _job(n: int, user: str, state: str, code: int = 0, **extra: Any) -> wire.Event:
    attrs = dict(cores=1, cpu_seconds=100.0, wall_seconds=600, node="n1", state=state,
                 exit_code=code, **extra)  # fmt: skip
    return wire.Event("batch_job", f"slurm:c:{n}", user, H + n * 60.0, H + n * 60.0 + 600, attrs)


def _timed(kind: str, id_: str, user: str, **attrs: Any) -> wire.Event:
    return wire.Event(kind, id_, user, H + 100.0, H + 130.0, attrs)  # type: ignore[arg-type]


EVENTS = [
    # alice: 5 jobs (the REQUEUED run is no job): 1 ok, 2 FAILED exit 1, 1 TIMEOUT, 1 CANCELLED
    _job(1, "alice", "COMPLETED"),
    _job(2, "alice", "FAILED", 1),
    _job(3, "alice", "FAILED", 1),
    _job(4, "alice", "TIMEOUT"),
    _job(5, "alice", "CANCELLED"),
    _job(6, "alice", "REQUEUED", requeued=True),
    # carol, HTCondor: COMPLETED with exit code 2 is a failure
    _job(7, "carol", "COMPLETED", 2, scheduler="htcondor"),
    _job(8, "carol", "COMPLETED", scheduler="htcondor"),
    # alice's server starts: ok, failed, timed out, stopped by her
    *(
        _timed("spawn", f"sp{i}", "alice", outcome=o)
        for i, o in enumerate(("ok", "failed", "timeout", "stopped"))
    ),  # fmt: skip
    # carol's Dask computations: two ok, one erred, one cancelled; and a worker
    *(
        _timed("dask_computation", f"dc{i}", "carol", outcome=o)
        for i, o in enumerate(("ok", "ok", "erred", "cancelled"))
    ),  # fmt: skip
    _timed("dask_worker", "dw1", "carol", nthreads=2),
    # alice's notebook, carol's terminal session
    wire.Event("session", "s1", "alice", H, H + 1800.0, {"profile": "default"}),
    wire.Event("session", "s2", "carol", H, H + 900.0, {"kind": "terminal"}),
]


def _read(user: str, fmt: str, read: float, files: float) -> list[wire.Series]:
    labels = {"user": user, "source": "remote", "identity": "verified", "auth": "token",
              "node": "xrd1", "format": fmt}  # fmt: skip
    times = [H + 60.0, H + 120.0]
    return [
        wire.Series(
            "user_data_read_bytes", "bytes", "counter", labels, times, [read / 2, read], created=H
        ),  # fmt: skip
        wire.Series(
            "user_files_opened", "1", "counter", labels, times, [files, files], created=H
        ),  # fmt: skip
    ]


SERIES = [
    *_read("alice", "physlite", 3 * GB, 4),
    *_read("carol", "nanoaod", 1 * GB, 2),
    *_read("carol", "ntuple", 0.5 * GB, 1),
    *_read("dave", "daod", 2 * GB, 3),
]


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Issuer]]:
    iss = Issuer("atlas", AUD)
    with IssuerServer(free_port(), [iss]):
        identity = tmp_path / "identity.toml"
        text = (IDENTITY + DAVE).replace(
            'display_name = "Alice"', 'display_name = "Alice"\ninstitution = "CERN"'
        )
        identity.write_text(text.replace("https://atlas.example.org/", iss.url))
        settings = ServerSettings(
            database_url=database_url,
            facility_tokens={"af": TOKEN},
            identity_file=identity,
            oidc_issuers={iss.url: {"vo": "atlas", "manager_groups": ["/atlas/af-managers"]}},
            oidc_audience=AUD,
            oidc_client_id="afmon",
            oidc_client_secret="client-secret",
            session_secret="a-session-secret-of-at-least-32-characters",
        )
        client = TestClient(create_app(settings, clock=lambda: H + 9000.0, with_dashboard=False))
        answer = Poster(client)(EVENTS, SERIES).json()
        assert answer["status"] == "applied", answer
        yield client, iss


def _id(iss: Issuer, who: str) -> str:
    return f"{iss.url}|{who}"


def test_failure_rates_per_member_and_vo(api: tuple[TestClient, Issuer]) -> None:
    client, iss = api
    engine = client.app.state.services.engine
    df = failures.failure_rates(engine, LOCAL_ADMIN, *WINDOW, by="member")
    got = {(r.member, r.activity): (r.starts, r.failed, r.timed_out, r.cancelled, r.failure_rate)
           for r in df.itertuples()}  # fmt: skip
    alice, carol = _id(iss, "alice"), _id(iss, "carol")
    assert got == {
        (alice, "batch"): (5, 3, 1, 1, 0.6),
        (alice, "session_start"): (4, 2, 1, 1, 0.5),
        (carol, "batch"): (2, 1, 0, 0, 0.5),
        (carol, "dask_computation"): (4, 1, 0, 1, 0.25),
    }
    vo = failures.failure_rates(engine, LOCAL_ADMIN, *WINDOW, by="vo")
    assert vo[vo.activity == "batch"][["starts", "failed"]].values.tolist() == [[7, 4]]
    bad = failures.batch_failures(engine, LOCAL_ADMIN, *WINDOW, by="member")
    assert bad.values.tolist() == [
        [alice, "FAILED", 1, "failed", 2],
        [alice, "CANCELLED", 0, "cancelled", 1],
        [alice, "TIMEOUT", 0, "timed_out", 1],
        [carol, "COMPLETED", 2, "failed", 1],
    ]


def test_failure_api_is_scoped(api: tuple[TestClient, Issuer]) -> None:
    client, iss = api
    params = {"start": WINDOW[0], "end": WINDOW[1]}

    def get(path: str, groups: list[str], **extra: Any) -> Any:
        token = iss.token("carol", groups)
        r = client.get(path, params={**params, **extra},
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()

    mine = get("/api/v1/failures", ["/atlas"])
    assert {(r["member"], r["activity"], r["failure_rate"]) for r in mine} == {
        (_id(iss, "carol"), "batch", 0.5),
        (_id(iss, "carol"), "dask_computation", 0.25),
    }
    assert get("/api/v1/failures/batch", ["/atlas"]) == [{
        "member": _id(iss, "carol"), "state": "COMPLETED", "exit_code": 2,
        "outcome": "failed", "jobs": 1,
    }]  # fmt: skip
    vo = get("/api/v1/failures", ["/atlas", "/atlas/af-managers"], by="vo")
    assert [(r["vo"], r["activity"], r["starts"], r["failed"]) for r in vo] == [
        ("atlas", "batch", 7, 4), ("atlas", "dask_computation", 4, 1),
        ("atlas", "session_start", 4, 2),
    ]  # fmt: skip
    token = iss.token("carol", ["/atlas"])
    r = client.get("/api/v1/failures", params={**params, "by": "qos"},
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 400 and "cannot group failures by 'qos'" in r.json()["detail"]
    assert client.get("/api/v1/failures", params=params).status_code == 401


def test_bytes_and_files_by_format(api: tuple[TestClient, Issuer]) -> None:
    client, iss = api
    engine = client.app.state.services.engine
    df = formats.read_by_format(engine, LOCAL_ADMIN, *WINDOW, by="member")
    assert df.values.tolist() == [
        [_id(iss, "alice"), "physlite", 3 * GB, 4.0],
        [_id(iss, "carol"), "nanoaod", 1 * GB, 2.0],
        [_id(iss, "carol"), "ntuple", 0.5 * GB, 1.0],
        [_id(iss, "dave"), "daod", 2 * GB, 3.0],
    ]
    # the ledger still holds every byte once, whatever its format
    usage = client.app.state.services.query.usage_totals(LOCAL_ADMIN, *WINDOW, by=("vo",))
    read = usage[usage.resource == "data_read_remote_bytes"]["amount"].sum()
    assert read == 6.5 * GB
    carol = Principal("member", member_id=_id(iss, "carol"))
    assert formats.read_by_format(engine, carol, *WINDOW, by="vo").values.tolist() == [
        ["atlas", "nanoaod", 1 * GB, 2.0],
        ["atlas", "ntuple", 0.5 * GB, 1.0],
    ]
    token = iss.token("carol", ["/atlas"])
    r = client.get("/api/v1/data-formats", params={"start": WINDOW[0], "end": WINDOW[1]},
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 200 and [x["format"] for x in r.json()] == ["nanoaod", "ntuple"]


def test_active_members_by_access_method(api: tuple[TestClient, Issuer]) -> None:
    client, iss = api
    engine = client.app.state.services.engine
    df = access.active_by_method(engine, LOCAL_ADMIN, *WINDOW, period="week")
    assert dict(zip(df.method, df.members, strict=True)) == {
        "all": 3, "notebook": 1, "terminal": 1, "dask": 1, "batch": 2, "data_only": 1, "other": 0,
    }  # fmt: skip
    assert set(df.period) == {"2026-W48"}
    month = access.active_by_method(engine, LOCAL_ADMIN, *WINDOW, period="month")
    assert set(month.period) == {"2026-11"} and month.members.tolist()[0] == 3
    token = iss.token("carol", ["/atlas"])
    r = client.get("/api/v1/access-methods", params={"start": WINDOW[0], "end": WINDOW[1]},
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    mine = {x["method"]: x["members"] for x in r.json()}
    assert mine == {"all": 1, "notebook": 0, "terminal": 1, "dask": 1, "batch": 1,
                    "data_only": 0, "other": 0}  # fmt: skip


def test_active_members_per_institution(api: tuple[TestClient, Issuer]) -> None:
    client, _iss = api
    engine = client.app.state.services.engine
    df = access.active_by_method(engine, LOCAL_ADMIN, *WINDOW, period="week", by="institution")
    got = {(r.institution, r.method): r.members for r in df.itertuples() if r.members}
    assert got == {
        ("", "all"): 1, ("", "terminal"): 1, ("", "dask"): 1, ("", "batch"): 1,  # carol
        ("CERN", "all"): 1, ("CERN", "notebook"): 1, ("CERN", "batch"): 1,  # alice
        ("Uni Example", "all"): 1, ("Uni Example", "data_only"): 1,  # dave
    }  # fmt: skip
    r = client.get(
        "/api/v1/access-methods",
        params={"start": WINDOW[0], "end": WINDOW[1], "by": "vo"},
        headers={"Authorization": "Bearer x"},
    )
    assert r.status_code == 401  # no valid token: refused before anything else


def test_an_empty_institution_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.toml"
    path.write_text(IDENTITY + DAVE.replace('"Uni Example"', '""'))
    with pytest.raises(IdentityError, match="institution"):
        parse_identity_file(path)
