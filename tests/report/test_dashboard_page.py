"""The dashboard's Reports page: registered in the navigation, and every link it offers
downloads a file of the report from the API."""

from __future__ import annotations

from afmon.dashboard import app as dash_app
from afmon.dashboard.pages import reports
from tests.report.conftest import WEEK, World


def test_reports_page_is_in_the_navigation() -> None:
    assert dash_app.PAGES[reports.PATH] is reports
    assert dash_app.NAV_IDS[reports.PATH] == "nav-reports"
    assert reports.layout().id == "reports-page"


def test_week_options_are_the_last_complete_weeks() -> None:
    now = WEEK.end + 3600.0  # Monday 01:00 after W09
    options = reports.week_options(now, n=3)
    assert [o["value"] for o in options] == ["2026-W09", "2026-W08", "2026-W07"]
    assert options[0]["label"] == "2026-W09 (2026-02-23 to 2026-03-01)"


def test_every_link_downloads_a_file(world: World) -> None:
    links = reports.report_links(str(WEEK))
    assert len(links) == 9  # JSON, HTML, four CSV, APEL v0.3, v0.4, accelerator records
    for label, href in links:
        r = world.client.get(href)
        assert r.status_code == 200, (label, r.text)
        assert r.headers["content-disposition"].startswith("attachment; filename=")
        assert len(r.content) > 0
