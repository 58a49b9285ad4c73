"""The ingest's fast path for the common record (one sample per series, nothing late) gives
the ledger of the general path to the last bit, and a batch reads only the capacity of the
nodes it names. The general path is taken by the same samples sent with each series' previous
sample again (the agent re-sending): that sample is a repeat, so the ledger must not change."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityMap, load_identity_file
from afmon.aggregator.ingest.apply import Ingestor
from afmon.aggregator.ingest.nodes import named_nodes, node_capacity
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.collectors import wire

T0 = 1_780_268_400.0  # 2026-05-31T23:00:00Z: the stream crosses an hour, a day and the handover
HANDOVER = 1_780_272_000.0  # 2026-06-01: "shared" passes from alice to bob
IDENTITY = """
[vos.atlas]
issuer = "https://atlas.example/"

[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice"
accounts = [{ facility = "af", local = "shared", valid_until = "2026-06-01T00:00:00Z" }]

[[members]]
vo = "atlas"
subject = "bob"
display_name = "Bob"
accounts = [{ facility = "af", local = "shared", valid_from = "2026-06-01T00:00:00Z" }]
"""
USERS = ("shared", "carol")  # carol is unmapped
STEP = 290.0  # 25 samples span 2 hours


def _values(k: int) -> dict[str, float]:
    """Each user's sample k: counters growing with a reset at k == 13, a moving gauge."""
    cpu = 1000.0 + 37.25 * k if k < 13 else 3.5 * (k - 12)
    return {"cpu": cpu, "read": 4096.0 * k * k, "rss": 2.0**30 * (1 + (k % 4) * 0.3)}


def _series(k: int, again: bool) -> list[wire.Series]:
    """The batch's series: sample k, with sample k-1 before it when `again`."""
    ks = [k - 1, k] if again and k else [k]
    times = [T0 + STEP * j for j in ks]
    out = [
        wire.Series("node_cpu_cores", "cores", "gauge", {}, times, [8.0] * len(ks)),
        wire.Series("node_hepscore23_per_core", "HS23", "gauge", {}, times, [11.5] * len(ks)),
    ]
    for user in USERS:
        labels = {"user": user}
        vals = [_values(j) for j in ks]
        out += [
            wire.Series("user_cpu_seconds", "seconds", "counter", labels, times,
                        [v["cpu"] for v in vals], created=T0 - 10_000.0),
            wire.Series("user_io_read_bytes", "bytes", "counter", labels, times,
                        [v["read"] for v in vals]),
            wire.Series("user_memory_rss_bytes", "bytes", "gauge", labels, times,
                        [v["rss"] for v in vals]),
        ]  # fmt: skip
    return out


def _ledger(tmp_path: Path, name: str, again: bool) -> tuple[list[tuple], list[tuple], int]:
    url = f"sqlite:///{tmp_path}/{name}.sqlite"
    engine = make_engine(url)
    create_schema(engine)
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    load_identity_file(engine, identity)
    settings = ServerSettings(database_url=url, facility_tokens={"af": "t" * 32})
    ingestor = Ingestor(engine, IdentityMap(engine), settings, clock=lambda: T0 + 86400)
    stale = 0
    for k in range(25):
        batch = wire.Batch(wire.WIRE_VERSION, "agent", "af", "n1", k + 1, T0 + STEP * k,
                           _series(k, again))  # fmt: skip
        result = ingestor.apply(batch, ingestor.judge(batch))
        assert result.status == "applied" and not result.refused, result
        stale += result.stale_samples
    rows = _rows(engine)
    engine.dispose()
    return *rows, stale


def _rows(engine: Engine) -> tuple[list[tuple], list[tuple]]:
    with engine.connect() as conn:
        usage = conn.execute(text("SELECT * FROM usage ORDER BY 1, 2, 3, 4, 5, 6")).all()
        daily = conn.execute(text("SELECT * FROM usage_day ORDER BY 1, 2, 3, 4, 5, 6")).all()
    return [tuple(r) for r in usage], [tuple(r) for r in daily]


def test_one_sample_records_give_the_general_paths_ledger_exactly(tmp_path: Path) -> None:
    usage, daily, stale = _ledger(tmp_path, "fast", again=False)
    usage_again, daily_again, stale_again = _ledger(tmp_path, "general", again=True)
    assert stale == 0 and stale_again == 24 * 8  # every series' repeated sample
    assert usage == usage_again  # bit for bit: floats compared with ==
    assert daily == daily_again
    members = {r[3] for r in usage}
    assert members == {
        "https://atlas.example/|alice",
        "https://atlas.example/|bob",
        "afmon:unmapped|af",
    }
    resources = {r[4] for r in usage}
    assert {"cpu_seconds", "cpu_hs23_seconds", "io_read_bytes", "memory_byte_seconds"} <= resources


def test_a_batch_reads_the_capacity_of_the_nodes_it_names_only(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/n.sqlite")
    create_schema(engine)
    with engine.begin() as conn:
        for node in ("n1", "n2", "n3", "n4"):
            conn.exec_driver_sql(
                "INSERT INTO node (facility, node, cpu_cores, hepscore23_per_core, updated) "
                "VALUES ('af', ?, 16, 10.5, 0)",
                (node,),
            )
    series = [
        wire.Series("user_cpu_seconds", "seconds", "counter", {"user": "a"}, [T0], [1.0]),
        wire.Series("user_cpu_seconds", "seconds", "counter", {"user": "b", "node": "n2"},
                    [T0], [1.0]),
    ]  # fmt: skip
    events = [wire.Event("batch_job", "j1", "a", T0 - 60, T0, {"node": "n3", "cores": 1})]
    batch = wire.Batch(wire.WIRE_VERSION, "agent", "af", "n1", 1, T0, series, events)
    assert named_nodes(batch) == {"n1", "n2", "n3"}
    with engine.begin() as conn:
        nodes, reported = node_capacity(conn, "?", batch, [None, None], {})
    assert set(nodes) == {"n1", "n2", "n3"}  # not n4, which the batch does not name
    assert nodes["n3"] == {"cpu_cores": 16.0, "hepscore23_per_core": 10.5}
    assert reported == {}
    engine.dispose()
