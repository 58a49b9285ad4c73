"""Colours, wording and formatting in headless Chromium, on an app of its own with more members
than the palette has colours (ten in atlas, one each in cms and lhcb, one unmapped account):
a VO keeps its colour on every page and range, no chart repeats a colour, a member reads their
own figures as theirs, a VO manager their VO's share of the facility, counts are integers,
the member grid is readable, and no page logs an error or an AG Grid warning."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from afmon.collectors import wire
from afmon.dashboard.colours import OTHERS_COLOUR, PALETTE
from tests.dashboard.conftest import (
    FACILITY,
    NODE,
    TIMEOUT,
    LiveApp,
    app_settings,
    ingest,
    open_fresh,
    pick_principal,
    serve,
    table_rows,
    wait_text,
)

pytestmark = pytest.mark.browser

ATLAS = [f"u{i:02d}" for i in range(1, 11)]  # ten atlas members: more than the palette's 8
# core-hours of CPU per local user; eve has no mapping
CPU_HOURS = {**{u: 0.1 * (i + 1) for i, u in enumerate(ATLAS)}, "bob": 1.2, "lena": 0.3}
CPU_HOURS["eve"] = 0.05
READ_GB = {"u01": 1.0, "bob": 2.0, "lena": 0.5}  # POSIX reads: the Data page's VO chart
ISSUER = {"atlas": "https://atlas-auth.example.org/", "cms": "https://cms-auth.example.org/",
          "lhcb": "https://lhcb-auth.example.org/"}  # fmt: skip


VO_OF = {**dict.fromkeys(ATLAS, "atlas"), "bob": "cms", "lena": "lhcb"}


def member_id(user: str) -> str:
    return f"{ISSUER[VO_OF[user]]}|{user}-sub"


def _identity() -> str:
    vos = "".join(f'[vos.{vo}]\nissuer = "{iss}"\n' for vo, iss in ISSUER.items())
    members = ""
    for user, vo in VO_OF.items():
        group = '\ngroup = "/atlas/higgs"' if user in ATLAS[:4] else ""
        members += (
            f'\n[[members]]\nvo = "{vo}"\nsubject = "{user}-sub"\n'
            f'display_name = "Member {user}"{group}\n'
            f'accounts = [{{ facility = "{FACILITY}", local = "{user}" }}]\n'
        )
    return vos + members


def _batches(now: float) -> list[wire.Batch]:
    t1, t2 = now - 1200.0, now - 600.0
    series = [
        wire.Series("node_cpu_cores", "cores", "gauge", {"node": NODE}, [t2], [64.0]),
        *[
            wire.Series("user_cpu_seconds", "seconds", "counter", {"user": u, "node": NODE},
                        [t1, t2], [10.0, 10.0 + 3600.0 * h])
            for u, h in CPU_HOURS.items()
        ],
        *[
            wire.Series("user_io_read_bytes", "bytes", "counter", {"user": u, "node": NODE},
                        [t2], [gb * 1e9], created=t1)
            for u, gb in READ_GB.items()
        ],
    ]  # fmt: skip
    events = [
        wire.Event("session", "s-u01-1", "u01", now - 3000.0, now - 2400.0),
        wire.Event("session", "s-u01-2", "u01", now - 2000.0, now - 1500.0),
        wire.Event("session", "s-u02-1", "u02", now - 3000.0, now - 1200.0),
    ]
    common = {"version": wire.WIRE_VERSION, "agent_id": "agent-colours", "facility": FACILITY,
              "node": NODE, "sent_at": now}  # fmt: skip
    return [wire.Batch(seq=1, series=series, **common), wire.Batch(seq=2, events=events, **common)]


@pytest.fixture(scope="module")
def many_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    settings = app_settings(tmp_path_factory.mktemp("afmon-colours"), _identity())
    with serve(settings, "uvicorn-colours") as url:
        now = time.time()
        for batch in _batches(now):
            ingest(url, batch)
        yield LiveApp(url, now)


# -- what the browser shows ------------------------------------------------------------------


def trace_colours(d: Any, graph_id: str) -> dict[str, str]:
    """Trace name -> bar colour, as plotly draws them, once the graph has bars."""
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{graph_id} g.trace.bars"),
        f"graph {graph_id} drew no bars",
    )
    return d.execute_script(
        "const gd = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "return Object.fromEntries(gd.data.map(t => [t.name, t.marker.color]));",
        graph_id,
    )


def problems(d: Any) -> list[dict[str, Any]]:
    """Console entries that are errors, and AG Grid's warnings (#94, #95 and the like)."""
    return [
        e
        for e in d.get_log("browser")
        if e["level"] == "SEVERE" or "AG Grid" in e["message"] or "ag-grid" in e["message"]
    ]


def _grid_ready(d: Any) -> None:
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#vo-table .ag-cell"), "empty member grid"
    )


def _vo_colours_of(d: Any, graph_id: str) -> dict[str, str]:
    return {k: v for k, v in trace_colours(d, graph_id).items() if k in ISSUER}


# -- tests -----------------------------------------------------------------------------------


def test_a_vo_has_one_colour_on_every_page_and_range(many_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, many_app.url, "/")
    day = _vo_colours_of(d, "fac-usage")
    assert set(day) == set(ISSUER)
    assert len(set(day.values())) == 3 and set(day.values()) <= set(PALETTE)
    open_fresh(d, many_app.url, "/?range=7d")
    wait_text(d, "#window-text", "hourly")
    WebDriverWait(d, TIMEOUT).until(lambda d: "range=7d" in d.current_url)
    assert _vo_colours_of(d, "fac-usage") == day
    open_fresh(d, many_app.url, "/data?range=30d")
    assert _vo_colours_of(d, "data-by-vo") == day  # another page, another range
    # a VO manager sees their VO in the colour everyone else sees it in
    open_fresh(d, many_app.url, "/")
    wait_text(d, "#fac-top-vos-table", "atlas")
    pick_principal(d, "vo:cms")
    wait_text(d, "#fac-viewer", "VO manager of cms")
    WebDriverWait(d, TIMEOUT).until(lambda d: set(_vo_colours_of(d, "fac-usage")) == {"cms"})
    assert _vo_colours_of(d, "fac-usage") == {"cms": day["cms"]}
    assert problems(d) == []


def test_charts_with_more_members_than_colours(many_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, many_app.url, "/member")
    wait_text(d, "#mem-heading", "Usage per member")
    colours = trace_colours(d, "mem-cpu")  # 13 members with CPU time
    assert len(colours) == len(PALETTE) + 1
    others = [name for name in colours if name.startswith("Other members")]
    assert others == ["Other members (5)"] and colours[others[0]] == OTHERS_COLOUR
    named = [c for name, c in colours.items() if name not in others]
    assert len(set(named)) == len(named) and set(named) <= set(PALETTE)  # no colour twice
    open_fresh(d, many_app.url, "/vo?vo=atlas")
    by_member = trace_colours(d, "vo-by-member")  # ten atlas members
    assert len(by_member) == len(PALETTE) + 1
    assert by_member["Other members (2)"] == OTHERS_COLOUR
    assert len(set(by_member.values())) == len(by_member)
    groups = trace_colours(d, "vo-by-group")
    assert len(set(groups.values())) == len(groups) == 2
    # the shares bars wear their group's colour, as in the chart over time
    shares = d.execute_script(
        "const t = document.querySelector('#vo-shares .js-plotly-plot').data[0];"
        "return Object.fromEntries(t.y.map((g, i) => [g, t.marker.color[i]]));"
    )
    assert shares == groups
    assert problems(d) == []


def test_a_member_reads_their_own_figures_as_theirs(many_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, many_app.url, "/")
    wait_text(d, "#fac-top-vos-table", "atlas")
    pick_principal(d, f"member:{member_id('bob')}")
    wait_text(d, "#fac-top-heading", "Your usage in this range")
    wait_text(d, "#fac-top-vos-table", "You")
    total = sum(CPU_HOURS.values())
    ((who, cpu, share, _session),) = table_rows(d, "#fac-top-vos-table")
    # his own CPU time, and his share of everyone's: not "cms 100.0 %"
    assert (who, cpu, share) == ("You", "1.20", f"{100 * 1.2 / total:.1f}")
    assert d.find_element(By.ID, "fac-tiles-heading").text == "Your totals in this range"
    assert d.find_element(By.CSS_SELECTOR, "#fac-tiles .tile h4").text == "You"
    wait_text(d, "#fac-usage .gtitle", "Your CPU time")
    page = d.find_element(By.ID, "page").text
    for vo_heading in ("Top VOs", "Totals per VO", "by VO", "cms:", "100.0"):
        assert vo_heading not in page, f"{vo_heading!r} on Bob's facility page"

    d.find_element(By.ID, "nav-vo").click()
    wait_text(d, "#vo-heading", "Your usage in cms")
    wait_text(d, "#vo-tiles", "Your CPU time")
    tiles = d.find_element(By.ID, "vo-tiles").text
    assert "cms:" not in tiles and "Share of" not in tiles and "1.20 core-hours" in tiles
    wait_text(d, "#vo-by-group .gtitle", "Your CPU time by group")

    d.find_element(By.ID, "nav-member").click()
    wait_text(d, "#mem-tiles", "Your usage")
    wait_text(d, "#mem-cpu .gtitle", "Your CPU time")

    d.find_element(By.ID, "nav-batch").click()
    wait_text(d, "#bat-members-heading", "Your batch jobs")
    assert not d.find_element(By.ID, "bat-vos-section").is_displayed()  # no "Per VO: cms"

    d.find_element(By.ID, "nav-data").click()
    wait_text(d, "#data-tiles", "Your data moved")
    assert not d.find_element(By.ID, "data-by-vo-section").is_displayed()
    assert problems(d) == []


def test_a_vo_manager_sees_the_vos_share_of_the_facility(many_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, many_app.url, "/vo")
    _grid_ready(d)
    pick_principal(d, "vo:atlas")
    wait_text(d, "#vo-tiles", "Share of the facility")
    atlas = sum(CPU_HOURS[u] for u in ATLAS)
    share = f"{100 * atlas / sum(CPU_HOURS.values()):.1f} %"
    assert share in d.find_element(By.ID, "vo-tiles").text and "100.0 %" not in share
    d.find_element(By.ID, "nav-facility").click()
    wait_text(d, "#fac-top-heading", "atlas in this range")
    wait_text(d, "#fac-top-vos-table", "atlas")
    ((vo, _cpu, vo_share, _session),) = table_rows(d, "#fac-top-vos-table")
    assert (vo, f"{vo_share} %") == ("atlas", share)  # the same share on both pages
    assert problems(d) == []


def test_the_member_grid_reads_well(many_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, many_app.url, "/vo?vo=atlas&resource=sessions")
    _grid_ready(d)
    cells = {
        c.find_element(By.XPATH, "..").get_attribute("row-index"): c.text
        for c in d.find_elements(By.CSS_SELECTOR, '#vo-table .ag-cell[col-id="sessions"]')
    }
    assert sorted(cells.values())[-2:] == ["1", "2"]  # counts as integers, never "2.00"
    assert all("." not in text for text in cells.values())
    # the whole member ID is in its cell, wrapped rather than cut
    ids = d.find_elements(By.CSS_SELECTOR, '#vo-table .ag-cell[col-id="member_id"]')
    assert ids and all(c.text.replace("\n", "") in {member_id(u) for u in ATLAS} for c in ids)
    assert d.execute_script(
        "return [...document.querySelectorAll('#vo-table .ag-cell[col-id=\"member_id\"]')]"
        ".every(c => c.scrollWidth <= c.clientWidth + 1);"
    )
    # headers wrap between words only: no word is split, none overflows its column
    broken = d.execute_script(
        "return [...document.querySelectorAll('#vo-table .ag-header-cell-text')].filter(e => {"
        "  const s = getComputedStyle(e);"
        "  return s.wordBreak !== 'normal' || s.overflowWrap !== 'normal'"
        "    || e.scrollWidth > e.clientWidth + 1;"
        "}).map(e => e.textContent);"
    )
    assert broken == []
    assert d.execute_script(  # every column fits a 1280-pixel window: no sideways scrolling
        "const v = document.querySelector('#vo-table .ag-body-horizontal-scroll-viewport');"
        "return v.scrollWidth <= v.clientWidth;"
    )
    # the page-size choice lists the grid's own page size (AG Grid #94/#95 otherwise)
    sizes = d.execute_script(
        "return dash_ag_grid.getApi('vo-table').getGridOption('paginationPageSizeSelector');"
    )
    page_size = d.execute_script(
        "return dash_ag_grid.getApi('vo-table').getGridOption('paginationPageSize');"
    )
    assert problems(d) == []  # AG Grid's warnings #94 and #95 among them
    assert isinstance(sizes, list) and page_size in sizes


@pytest.mark.parametrize(
    "path", ["/", "/vo", "/member", "/alerts", "/reports", "/gpus", "/batch", "/interactive",
             "/data"],
)  # fmt: skip
def test_no_console_errors_on_any_page(many_app: LiveApp, browser: Any, path: str) -> None:
    d = browser
    open_fresh(d, many_app.url, path)
    WebDriverWait(d, TIMEOUT).until(
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#page > div[id$='-page']")
            and not d.find_elements(By.CSS_SELECTOR, "[data-dash-is-loading='true']")
        ),
        f"{path} never finished loading",
    )
    time.sleep(0.5)  # late warnings (a grid's first render) reach the log
    assert problems(d) == []
