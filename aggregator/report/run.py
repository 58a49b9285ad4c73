"""One report run: from a query layer (and whom it is for) to the files."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.report.build import Progress, build_report
from afmon.aggregator.report.files import ReportFile, render_files
from afmon.aggregator.report.week import Week
from afmon.aggregator.store.db import make_engine


class ReportInputError(RuntimeError):
    """There is no afmon database to report on."""


def open_query(database_url: str) -> Query:
    """The query layer over an existing afmon database (nothing is created)."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[-1]
        if path and path != ":memory:" and not Path(path).is_file():
            raise ReportInputError(f"no database file {path} (AFMON_DATABASE_URL={database_url})")
    engine = make_engine(database_url)
    try:
        has_ledger = inspect(engine).has_table("usage")
    except Exception as exc:  # noqa: BLE001  (any connection failure: say which URL)
        raise ReportInputError(f"cannot open {database_url}: {exc}") from exc
    if not has_ledger:
        raise ReportInputError(f"{database_url} has no afmon ledger (no table 'usage')")
    return Query(engine)


def build_files(
    query: Query,
    principal: Principal | None,
    settings: ServerSettings,
    week: Week,
    formats: tuple[str, ...],
    facility: str | None = None,
    vo: str | None = None,
    progress: Progress | None = None,
) -> list[ReportFile]:
    """Build the report for `principal` (the facility admin when None) and render it."""
    doc = build_report(query, principal or LOCAL_ADMIN, week, settings, facility, vo, progress)
    return render_files(doc, formats)
