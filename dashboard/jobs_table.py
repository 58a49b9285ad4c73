"""The per-job table of the Member page: `events_list.batch_jobs` -> display rows."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

from afmon.dashboard.figures import HOUR, Column, TableData, fmt_plain, fmt_utc


def _cell(value: float | None, show: Callable[[float], str]) -> str:
    """`show(value)`, or "n/a" for an unknown value (None or NaN)."""
    return "n/a" if value is None or pd.isna(value) else show(float(value))


def jobs_table(df: pd.DataFrame, names: Mapping[str, str] | None = None) -> TableData:
    """Job id, member, state, exit code, start/end (UTC), wall hours, cores, CPU efficiency
    (CPU / (wall x cores)) and GPUs, newest first as the query returns them."""
    table = TableData(
        [
            Column("Job"),
            Column("Member"),
            Column("State"),
            Column("Exit code", True),
            Column("Start (UTC)"),
            Column("End (UTC)"),
            Column("Wall [hours]", True),
            Column("Cores", True),
            Column("CPU efficiency", True),
            Column("GPUs", True),
        ],
        empty_message="No batch jobs started in this range.",
    )
    for r in df.itertuples(index=False):
        running = r.end is None or pd.isna(r.end)
        table.rows.append(
            [
                str(r.id),
                str((names or {}).get(r.member_id) or r.display_name),
                str(r.state),
                _cell(r.exit_code, lambda v: f"{v:.0f}"),
                fmt_utc(r.start),
                "still running" if running else fmt_utc(r.end),
                _cell(r.wall_seconds, lambda v: fmt_plain(v / HOUR)),
                _cell(r.cores, lambda v: f"{v:.0f}"),
                _cell(r.cpu_efficiency, lambda v: f"{v:.0%}"),
                str(r.gpus),
            ]
        )
    return table
