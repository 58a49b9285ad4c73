"""Live capacity with stale nodes, running sessions and the GPU tile on a seeded database:
what `Query.capacity`, `Query.nodes` and `Query.running_sessions` return, and that the stale
threshold is the AfmonAgentSilent rule's."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from afmon.aggregator.query.operations import NODE_STALE_SECONDS
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.dashboard.facility_live import live_now
from afmon.dashboard.figures import nodes_table
from tests.dashboard.test_vo_view import ALICE, BOB, NOW, T0, _seed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def query(tmp_path: Path) -> Query:
    from afmon.aggregator.store.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path}/afmon.sqlite")
    _seed(engine, tmp_path)
    with engine.begin() as conn:
        # n1's agent reported a minute ago; n2's has been silent for 11 minutes; n3 (GPUs only)
        for agent, fac, node, seen in (("a1", "af-a", "n1", NOW - 60), ("a2", "af-b", "n2",
                                       NOW - 660), ("a3", "af-a", "n3", NOW - 30)):  # fmt: skip
            conn.execute(
                text(
                    "INSERT INTO agent (agent_id, facility, node, last_seen, last_seq, batches, "
                    "samples) VALUES (:a, :f, :n, :t, 1, 1, 1)"
                ),
                {"a": agent, "f": fac, "n": node, "t": seen},
            )
        for i, (fac, node) in enumerate((("af-a", "n3"), ("af-a", "n3"), ("af-b", "n2"))):
            conn.execute(
                text(
                    "INSERT INTO series (facility, node, metric, labels, unit, kind) VALUES "
                    "(:f, :n, 'gpu_info', :l, '1', 'gauge')"
                ),
                {"f": fac, "n": node, "l": f'{{"gpu": "GPU-{i}"}}'},
            )
    return Query(engine)


def test_the_stale_threshold_is_the_agent_silence_rule() -> None:
    rules = yaml.safe_load((ROOT / "alerts/rules/afmon.yaml").read_text())
    silent = [r for r in rules["rules"] if r["name"] == "AfmonAgentSilent"]
    assert [(r["signal"], r["op"], float(r["threshold"])) for r in silent] == [
        ("agent_silence_seconds", ">", NODE_STALE_SECONDS)
    ]


def test_capacity_leaves_stale_nodes_out(query: Query) -> None:
    everything = query.capacity(LOCAL_ADMIN).set_index("facility")
    assert everything.loc["af-a", ["nodes", "cpu_cores", "gpus"]].tolist() == [1, 64.0, 2]
    assert everything.loc["af-b", ["nodes", "cpu_cores", "gpus"]].tolist() == [1, 32.0, 1]
    assert everything["stale_nodes"].sum() == 0  # without `now` nothing is stale
    live = query.capacity(LOCAL_ADMIN, NOW).set_index("facility")
    assert live.loc["af-a", ["nodes", "cpu_cores", "gpus", "stale_nodes"]].tolist() == [1, 64, 2, 0]
    assert live.loc["af-b", ["nodes", "cpu_cores", "gpus"]].tolist() == [0, 0.0, 0]
    assert live.loc["af-b", ["stale_nodes", "stale_cpu_cores", "stale_gpus"]].tolist() == [
        1,
        32.0,
        1,
    ]
    bound = query.capacity(Principal("facility_admin", facility="af-b"), NOW)
    assert bound["facility"].tolist() == ["af-b"] and int(bound["stale_nodes"].sum()) == 1


def test_nodes_say_which_are_stale(query: Query) -> None:
    nodes = query.nodes(LOCAL_ADMIN, NOW)
    assert dict(zip(nodes["node"], nodes["stale"], strict=True)) == {"n1": False, "n2": True}
    rows = {r[1]: r for r in nodes_table(nodes, NOW).rows}
    assert rows["n1"][-1] == "live"
    assert rows["n2"][-1] == "silent 11 min: not in live capacity"
    assert "Status" not in [c.name for c in nodes_table(query.nodes(LOCAL_ADMIN)).columns]
    assert query.nodes(Principal("member", member_id=BOB), NOW).empty


def test_live_now_and_its_gpu_tile(query: Query) -> None:
    live = live_now(query, LOCAL_ADMIN, NOW)
    assert live.capacity == {"cores": 64.0, "gpus": 2.0, "memory_bytes": 256 * 2.0**30,
                             "nodes": 1.0}  # fmt: skip
    assert live.stale == {"cores": 32.0, "gpus": 1.0, "memory_bytes": 128 * 2.0**30,
                          "nodes": 1.0}  # fmt: skip
    gpus = live.gauge("gpus", "x")
    texts = [c.children for c in gpus.children if hasattr(c, "children")]
    assert "0 GPUs (no GPU reported)" not in texts
    assert "0 of 2 GPUs (0.0 %)" in texts
    assert "1 silent node (1 GPU) left out: no report for over 10 min" in texts


def test_running_sessions(query: Query) -> None:
    # bob's session began 600 s before NOW and has not ended; alice's has
    by_member = query.running_sessions(LOCAL_ADMIN, T0, NOW + 3600, NOW)
    assert by_member.to_dict("records") == [{"member": BOB, "sessions": 1, "seconds": 600.0}]
    by_vo = query.running_sessions(LOCAL_ADMIN, NOW - 300, NOW + 3600, NOW, by="vo")
    assert by_vo.to_dict("records") == [{"vo": "cms", "sessions": 1, "seconds": 300.0}]
    assert query.running_sessions(Principal("member", member_id=ALICE), T0, NOW, NOW).empty
