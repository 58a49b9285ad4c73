"""afmon's APEL summaries as an APEL repository takes them: parsed by the APEL client's own
record classes (the ones the server's loader uses), then stored with the server's own stored
procedure into the server's own schema (tests/report/data/apel_server.sql, verbatim) on a
real MariaDB, and read back through its view. A summary without a field the schema holds
NOT NULL is refused there, as the outside tester found for afmon's earlier records.

Needs the MariaDB at 127.0.0.1:3306 (user root, no password; AFMON_TEST_MARIADB=user@host:port
to use another); fails, never skips, without it. Each test run works in its own database,
dropped afterwards.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql
import pytest

from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.report import apel
from afmon.aggregator.report.build import build_report
from tests.report.apel_world import WEEK, BatchWorld, build_world
from tests.report.conftest import World

DATA = Path(__file__).parent / "data"
SERVER = os.environ.get("AFMON_TEST_MARIADB", "root@127.0.0.1:3306")
PUBLISHER = "/DC=org/DC=example/CN=afmon report"  # the sender's DN, appended by the loader
# apel.db.backends.mysql.ApelMysqlDb.REPLACE_PROCEDURES[NormalisedSummaryRecord(04)]
REPLACE = "CALL ReplaceNormalisedSummary(" + ", ".join(["%s"] * 21) + ")"
COLUMNS = (
    "Site", "Month", "Year", "GlobalUserName", "VO", "VOGroup", "VORole", "SubmitHost",
    "Infrastructure", "ServiceLevelType", "NodeCount", "Processors", "EarliestEndTime",
    "LatestEndTime", "WallDuration", "CpuDuration", "NormalisedWallDuration",
    "NormalisedCpuDuration", "NumberOfJobs",
)  # fmt: skip


@pytest.fixture(scope="module")
def records_module() -> Any:
    """The APEL client's record classes (tests/report/data/apel_client, see its README)."""
    sys.path.insert(0, str(DATA / "apel_client"))
    try:
        from apel.db.records import normalised_summary

        yield normalised_summary
    finally:
        sys.path.remove(str(DATA / "apel_client"))


def create_records(records_module: Any, message: str) -> list[Any]:
    """apel.db.loader.record_factory.RecordFactory.create_records for the two normalised
    summary headers: the header picks the class, `%%` separates the records."""
    header, _, body = message.strip().partition("\n")
    cls = {
        apel.V03_HEADER: records_module.NormalisedSummaryRecord,
        apel.V04_HEADER: records_module.NormalisedSummaryRecord04,
    }[header.strip()]
    out = []
    for text in body.strip().split("%%"):
        if text.strip():
            record = cls()
            record.load_from_msg(text)
            out.append(record)
    return out


def statements(sql: str) -> Iterator[str]:
    """The statements of a mysql-client script, honouring its DELIMITER lines."""
    delimiter, lines = ";", []
    for line in sql.splitlines():
        s = line.strip()
        if s.upper().startswith("DELIMITER "):
            delimiter = s.split()[1]
            continue
        if not lines and (not s or s.startswith("--")):
            continue
        lines.append(line)
        if s.endswith(delimiter) and not s.startswith("--"):
            text = "\n".join(lines).rstrip()[: -len(delimiter)]
            lines = []
            if text.strip():
                yield text


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    """A fresh database on the MariaDB with the APEL server's schema; dropped afterwards."""
    m = re.fullmatch(r"([^@]+)@([^:]+):(\d+)", SERVER)
    assert m, f"AFMON_TEST_MARIADB={SERVER!r}: give user@host:port"
    args: dict[str, Any] = {"host": m.group(2), "port": int(m.group(3)), "user": m.group(1)}
    name = f"afmon_apel_{uuid.uuid4().hex[:12]}"
    try:
        admin = pymysql.connect(**args, autocommit=True)
    except pymysql.err.MySQLError as exc:
        pytest.fail(f"the MariaDB at {SERVER} is needed for this test: {exc}")
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    try:
        conn = pymysql.connect(**args, database=name)
        with conn.cursor() as cur:
            for stmt in statements((DATA / "apel_server.sql").read_text()):
                cur.execute(stmt)
        conn.commit()
        conn.close()
        yield {**args, "database": name}
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def db(server: dict[str, Any]) -> Iterator[pymysql.connections.Connection]:
    """A connection to the APEL schema, its summaries emptied for each test."""
    conn = pymysql.connect(**server)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM NormalisedSummaries")
    conn.commit()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def bw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchWorld]:
    world = build_world(tmp_path_factory.mktemp("apel-repository"))
    try:
        yield world
    finally:
        world.client.close()


def load(conn: pymysql.connections.Connection, records: list[Any]) -> None:
    """ApelMysqlDb.load_records: every record through the procedure, one transaction."""
    try:
        with conn.cursor() as cur:
            for r in records:
                cur.execute(REPLACE, r.get_db_tuple(PUBLISHER))
        conn.commit()
    except pymysql.err.MySQLError:
        conn.rollback()
        raise


def stored(conn: pymysql.connections.Connection) -> list[dict[str, Any]]:
    with conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM VNormalisedSummaries")
        return list(cur.fetchall())


def expected_row(r: dict[str, str], benchmark: str | None) -> dict[str, Any]:
    """What the repository should hold for one of afmon's records (as it wrote it)."""

    def figure(value: str) -> int:
        if benchmark is None:
            return int(value)
        marks = dict(p.split(": ") for p in value.strip("{}").split(", "))
        return int(marks["HEPscore23"])

    def when(epoch: str) -> datetime:
        return datetime.fromtimestamp(int(epoch), UTC).replace(tzinfo=None)

    return {
        **{k: r[k] for k in ("Site", "GlobalUserName", "VO", "VOGroup", "SubmitHost")},
        **{k: int(r[k]) for k in ("Month", "Year", "NodeCount", "Processors")},
        **{k: int(r[k]) for k in ("WallDuration", "CpuDuration", "NumberOfJobs")},
        "VORole": "None",  # afmon has no roles: the APEL client's own value for none
        "Infrastructure": r["Infrastructure"],
        "ServiceLevelType": benchmark or "None",
        "EarliestEndTime": when(r["EarliestEndTime"]),
        "LatestEndTime": when(r["LatestEndTime"]),
        "NormalisedWallDuration": figure(r["NormalisedWallDuration"]),
        "NormalisedCpuDuration": figure(r["NormalisedCpuDuration"]),
    }


def key(row: dict[str, Any]) -> tuple:
    return tuple(
        row[k] for k in ("Month", "GlobalUserName", "SubmitHost", "NodeCount", "Processors")
    )


def messages(bw: BatchWorld, world: World, version: str, **settings: Any) -> list[str]:
    """The v0.3 or v0.4 message of both test facilities' week 2026-W09 (batch jobs of several
    node and core counts; interactive sessions of six members), named by a GOCDB site."""
    render = apel.render_v03 if version == "v0.3" else apel.render_v04
    s = world.settings.model_copy(update={"apel_site": "UKI-AFMON-TEST", **settings})
    return [
        render(bw.doc(apel_site="UKI-AFMON-TEST", **settings)).decode(),
        render(build_report(world.query, LOCAL_ADMIN, WEEK, s)).decode(),
    ]


def test_v04_records_are_stored_by_the_apel_server_and_read_back(
    bw: BatchWorld, world: World, records_module: Any, db: pymysql.connections.Connection
) -> None:
    texts = messages(bw, world, "v0.4")
    sent = [r for text in texts for r in apel.parse_summary_message(text)[1]]
    assert {r["SubmitHost"].rsplit("/", 1)[1] for r in sent} == {"batch", "interactive"}
    for text in texts:
        load(db, create_records(records_module, text))
    rows = stored(db)
    # one row per record: no two of afmon's summaries share the server's summary key
    assert len(rows) == len(sent) > 12
    want = sorted((expected_row(r, "hepscore23") for r in sent), key=key)
    assert sorted(rows, key=key) == want
    # the APEL server keeps the benchmark with the record: v0.4 is read as HEPscore23
    assert {r["ServiceLevelType"] for r in rows} == {"hepscore23"}
    # next week's send replaces the month to date (the server's summary key), adds nothing
    for text in texts:
        load(db, create_records(records_module, text))
    assert len(stored(db)) == len(sent)


def test_v03_is_stored_in_hepspec06_with_a_factor(
    bw: BatchWorld, world: World, records_module: Any, db: pymysql.connections.Connection
) -> None:
    texts = messages(bw, world, "v0.3", report_hs06_per_hs23=0.8)
    sent = [r for text in texts for r in apel.parse_summary_message(text)[1]]
    for text in texts:
        load(db, create_records(records_module, text))
    rows = sorted(stored(db), key=key)
    assert rows == sorted((expected_row(r, None) for r in sent), key=key)
    hs23 = {key(expected_row(r, "hepscore23")): r for r in apel.parse_summary_message(
        messages(bw, world, "v0.4")[0])[1]}  # fmt: skip
    for row in rows:  # HEPSPEC06 = HEPscore23 x 0.8 (v0.3 names no benchmark)
        if row["SubmitHost"].endswith("/batch"):
            marks = hs23[key(row)]["NormalisedCpuDuration"].strip("{}").split(": ")
            assert abs(row["NormalisedCpuDuration"] - 0.8 * int(marks[1])) <= 1
    # without the factor v0.3 carries nothing a repository would read wrongly
    assert [create_records(records_module, t) for t in messages(bw, world, "v0.3")] == [[], []]


@pytest.mark.parametrize("dropped", ["NodeCount", "Processors"])
def test_a_summary_without_a_not_null_field_is_refused(
    bw: BatchWorld, records_module: Any, db: pymysql.connections.Connection, dropped: str
) -> None:
    """The message format lets NodeCount and Processors out; the server's table does not:
    such a record parses, and the insert fails (as afmon's records before this did)."""
    text = apel.render_v04(bw.doc()).decode()
    without = "\n".join(line for line in text.splitlines() if not line.startswith(dropped))
    records = create_records(records_module, without)
    assert records and all(r.get_field(dropped) is None for r in records)
    with pytest.raises(pymysql.err.IntegrityError, match=f"Column '{dropped}' cannot be null"):
        load(db, records)
    assert stored(db) == []  # the whole message is rolled back
    load(db, create_records(records_module, text))  # the same records with the field: stored
    assert len(stored(db)) == len(records)


def test_every_record_parses_with_the_apel_client_classes(
    bw: BatchWorld, world: World, records_module: Any
) -> None:
    for version, settings in (("v0.4", {}), ("v0.3", {"report_hs06_per_hs23": 1.2})):
        for text in messages(bw, world, version, **settings):
            _, ours = apel.parse_summary_message(text)
            theirs = create_records(records_module, text)
            assert len(theirs) == len(ours) > 0
            for mine, record in zip(ours, theirs, strict=True):
                assert record.get_field("NodeCount") == int(mine["NodeCount"])
                assert record.get_field("Processors") == int(mine["Processors"])
                assert record.get_field("Site") == "UKI-AFMON-TEST"
                record.get_db_tuple(PUBLISHER)  # the server's checks (month, end times, ...)
