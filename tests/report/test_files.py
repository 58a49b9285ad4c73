"""`afmon report weekly` and the API: byte-identical files, the same bytes from both, and
clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from afmon.aggregator.cli.main import main
from tests.report.conftest import SILENCE_SECONDS, WEEK, World

KINDS = {  # API format (and level) -> the CLI's file suffix
    ("json", "member"): ".json",
    ("html", "member"): ".html",
    ("apel-v03", "member"): "-apel-v03.txt",
    ("apel-v04", "member"): "-apel-v04.txt",
    **{("csv", level): f"-{level}.csv" for level in ("member", "group", "vo", "facility")},
}


@pytest.fixture
def cli_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads the server's environment (the settings that shape the numbers)."""
    monkeypatch.setenv("AFMON_DATABASE_URL", world.database_url)
    monkeypatch.setenv("AFMON_REPORT_SILENCE_SECONDS", str(SILENCE_SECONDS))


def run_cli(out: Path, *extra: str) -> dict[str, bytes]:
    assert main(["report", "weekly", "--week", str(WEEK), "--out", str(out), *extra]) == 0
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_two_runs_give_identical_bytes_and_the_api_the_same(
    world: World, cli_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = run_cli(tmp_path / "a")
    second = run_cli(tmp_path / "b")
    base = f"afmon-report-{WEEK}"
    expected = {base + suffix for suffix in KINDS.values()} | {base + "-apel-accelerator.json"}
    assert set(first) == expected
    assert first == second
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(list(first) * 2)
    for (fmt, level), suffix in KINDS.items():
        r = world.client.get(
            "/api/v1/reports/weekly", params={"week": str(WEEK), "format": fmt, "level": level}
        )
        assert r.status_code == 200, r.text
        assert r.content == first[base + suffix], (fmt, level)
        assert f'filename="{base}{suffix}"' in r.headers["content-disposition"]
    r = world.client.get(
        "/api/v1/reports/weekly", params={"week": str(WEEK), "format": "apel-accelerator"}
    )
    assert r.status_code == 200 and r.content == first[base + "-apel-accelerator.json"]


def test_filters_and_formats_on_the_command_line(cli_env: None, tmp_path: Path) -> None:
    files = run_cli(tmp_path, "--vo", "cms", "--format", "csv,json")
    assert sorted(files) == sorted(
        [f"afmon-report-{WEEK}-cms.json"]
        + [f"afmon-report-{WEEK}-cms-{lv}.csv" for lv in ("facility", "group", "member", "vo")]
    )
    vo_csv = files[f"afmon-report-{WEEK}-cms-vo.csv"].decode().splitlines()
    assert len(vo_csv) == 2 and vo_csv[1].startswith("test-af,cms,")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--week", "2026-47"], "bad week '2026-47': give an ISO week like 2026-W47"),
        (["--week", "2025-W53"], "2025 has no ISO week 53"),
        (["--week", "2099-W01"], "has not ended yet"),
        (["--format", "pdf"], "unknown format pdf"),
    ],
)
def test_bad_input_is_named(
    cli_env: None, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "weekly", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_database_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/none.sqlite"
    assert main(["report", "weekly", "--week", "2026-W01", "--database-url", url]) == 1
    assert f"no database file {tmp_path}/none.sqlite" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite").exists()  # nothing created


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"week": "W47"}, 400, "give an ISO week like 2026-W47"),
        ({"week": "2099-W01"}, 400, "has not ended yet"),
        ({"week": str(WEEK), "format": "pdf"}, 400, "unknown format 'pdf'"),
        ({"week": str(WEEK), "format": "csv", "level": "node"}, 400, "unknown level 'node'"),
    ],
)
def test_api_names_bad_input(world: World, params: dict, status: int, message: str) -> None:
    r = world.client.get("/api/v1/reports/weekly", params=params)
    assert r.status_code == status
    assert message in r.json()["detail"]


def test_api_default_week_is_the_last_complete_one(world: World) -> None:
    # the app's clock stands at the end of W09 + 14 days, the start of W12: the last
    # complete week is W11 (no data)
    r = world.client.get("/api/v1/reports/weekly")
    assert r.status_code == 200
    assert r.json()["week"] == str(WEEK.shifted(2)) == "2026-W11"
    assert r.json()["levels"]["member"] == []
