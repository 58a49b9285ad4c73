"""What the VO page shows, computed from the query layer: one VO's usage per group and per
member over time, its shares, its member table and the same VO across facilities.

Pure functions of (query, principal, window, filters), so the page callbacks, the CSV download
and the tests share them. Every figure is principal-scoped by the query layer: the filters
(VO, group, name) only ever narrow what the principal may see.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from afmon.aggregator.query.reads import LOCAL_ADMIN, OTHERS, Principal, Query
from afmon.aggregator.store.schema import UNMAPPED
from afmon.dashboard import figures
from afmon.dashboard.colours import PALETTE, assign
from afmon.dashboard.pages.common import Window, titled
from afmon.dashboard.theme import PLOT_LAYOUT

TABLE_RESOURCES: tuple[str, ...] = (
    "cpu_seconds",
    "cpu_hs23_seconds",
    "memory_byte_seconds",
    "session_seconds",
    "sessions",
)
# members drawn one by one, each in a colour of its own; the rest are one "other members" trace
TOP_MEMBERS = len(PALETTE)
NO_DATA_YET = "No data yet: no agent has reported any usage you may see."
NO_MEMBERS = "No members are known yet: an operator loads them from the identity file."


def in_sentence(title: str) -> str:
    """A title inside a sentence: "Session time" -> "session time", "CPU time" stays."""
    return title if title[:2].isupper() else title[:1].lower() + title[1:]


def not_allowed(vo: str) -> str:
    return f"Not allowed: you may not see the VO {vo!r}. Pick one of yours above."


@dataclass
class VoView:
    """Everything the page renders; `message` (with nothing else) when there is nothing."""

    vos: list[str]
    vo: str | None
    groups: list[str] = field(default_factory=list)
    message: str = ""
    by_group: go.Figure | None = None
    by_member: go.Figure | None = None
    shares: go.Figure | None = None
    members: pd.DataFrame = field(default_factory=pd.DataFrame)
    facilities: pd.DataFrame = field(default_factory=pd.DataFrame)
    total: float = 0.0
    share_of_visible: float | None = None
    # what share_of_visible is a share of: all VOs an admin sees, or everyone's usage
    share_of: str = ""
    active: int = 0


def visible_vos(members: pd.DataFrame) -> list[str]:
    return sorted(set(members.loc[members["vo"] != UNMAPPED, "vo"]))


def member_columns(resource: str, member: bool = False) -> list[tuple[str, str]]:
    """(column id, header with unit) of the member table and its CSV (`member`: the viewer is
    a member, who sees only their own row)."""
    cols = [
        ("member", "Member"),
        ("member_id", "Member ID"),
        ("group", "Group"),
        ("facilities", "Facilities"),
    ]
    cols += [
        (r, f"{figures.display_unit(r).title} [{figures.display_unit(r).unit}]")
        for r in TABLE_RESOURCES
    ]
    du = figures.display_unit(resource)
    whose = "your" if member else "the VO's"
    cols.append(("share", f"Share of {whose} {in_sentence(du.title)} [%]"))
    return cols


def member_table(totals: pd.DataFrame, names: Mapping[str, str], resource: str) -> pd.DataFrame:
    """`Query.vo_totals(by=(facility, group, member))` -> one row per member, amounts in the
    units the headers name (`round_shown`), the share of `resource`, largest first."""
    ids = [c for c, _h in member_columns(resource)]
    if totals.empty:
        return pd.DataFrame(columns=ids)
    # a member's group is the same at every facility; the sum over both keeps it exact
    wide = totals.groupby(["member", "resource"])["amount"].sum().unstack("resource")
    wide = wide.reindex(columns=list(dict.fromkeys([*TABLE_RESOURCES, resource]))).fillna(0.0)
    groups = totals.groupby("member")["group"].first()
    facs = (
        totals[["member", "facility"]]
        .drop_duplicates()
        .sort_values(["member", "facility"])
        .groupby("member")["facility"]
        .agg(", ".join)
    )
    all_total = float(wide[resource].sum())
    out = pd.DataFrame(
        {
            "member": [names.get(m, m) for m in wide.index],
            "member_id": list(wide.index),
            "group": groups.reindex(wide.index).tolist(),
            "facilities": facs.reindex(wide.index, fill_value="").tolist(),
        }
    )
    for r in TABLE_RESOURCES:
        out[r] = round_shown(wide[r].to_numpy() * figures.display_unit(r).factor)
    out["share"] = round_shown(100 * wide[resource].to_numpy() / all_total) if all_total else 0.0
    out["_sort"] = wide[resource].to_numpy()
    out = out.sort_values(["_sort", "member"], ascending=[False, True], kind="stable")
    return out.drop(columns="_sort").reset_index(drop=True)[ids]


def round_shown(values: np.ndarray) -> np.ndarray:
    """Rounded as the page shows them: 2 decimals, or at most 2 significant figures below 0.01
    (a small amount is not 0)."""
    size = np.abs(values)
    small = (size > 0) & (size < 0.01)
    digits = np.where(small, 1 - np.floor(np.log10(np.where(small, size, 1.0))), 2.0)
    return np.round(values * 10**digits) / 10**digits


def filter_members(table: pd.DataFrame, text: str) -> pd.DataFrame:
    """The rows of a `member_table` whose name or ID contains `text` (case-insensitive)."""
    if not text or table.empty:
        return table
    needle = text.lower()
    keep = table["member"].str.lower().str.contains(needle, regex=False) | table[
        "member_id"
    ].str.lower().str.contains(needle, regex=False)
    return table[keep].reset_index(drop=True)


def facilities_table(totals: pd.DataFrame, resource: str) -> pd.DataFrame:
    """Per facility: the VO's amount of `resource` (display unit), its share, active members."""
    du = figures.display_unit(resource)
    cols = ["facility", "amount", "share", "members"]
    rows = totals[totals["resource"] == resource] if not totals.empty else totals
    if rows.empty:
        return pd.DataFrame(columns=cols)
    per = rows.groupby("facility").agg(amount=("amount", "sum"), members=("member", "nunique"))
    total = float(per["amount"].sum())
    per["share"] = 100 * per["amount"] / total if total else 0.0
    per["amount"] = per["amount"] * du.factor
    per = per.sort_values("amount", ascending=False).reset_index()
    return per[cols]


def shares_figure(
    totals: pd.DataFrame,
    resource: str,
    vo: str,
    colours: Mapping[str, str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Each group's share of the VO's `resource` in the window, as horizontal bars in %, each
    in its group's colour (`colours`, as in the group chart)."""
    du = figures.display_unit(resource)
    rows = totals[totals["resource"] == resource] if not totals.empty else totals
    per = rows.groupby("group")["amount"].sum() if not rows.empty else pd.Series(dtype=float)
    if per.empty or per.sum() == 0:
        return figures.empty_figure("Share [%]")
    share = (100 * per / per.sum()).sort_values()
    bar = {
        "type": "bar",
        "x": share.tolist(),
        "y": [str(g) for g in share.index],
        "orientation": "h",
        "text": [f"{v:.1f} %" for v in share],
        "textposition": "auto",
        "customdata": [du.format(per[g]) for g in share.index],
        "hovertemplate": "%{y}: %{x:.1f} % (%{customdata})<extra></extra>",
        "name": "share",
        "marker": {"color": [(colours or {}).get(str(g), PALETTE[0]) for g in share.index]},
    }
    layout = {
        **PLOT_LAYOUT,
        "title": {
            "text": title or f"Share of {vo}'s {in_sentence(du.title)} by group",
            "x": 0,
        },
        "showlegend": False,
        "height": max(200, 80 + 36 * len(share)),
        "xaxis": {"title": {"text": "Share [%]"}, "range": [0, 100]},
        "yaxis": {"title": {"text": "Group"}, "automargin": True},
    }
    return go.Figure(data=[bar], layout=layout, _validate=False)  # plain values: see usage_figure


def _member_series(
    q: Query,
    p: Principal,
    vo: str,
    resource: str,
    w: Window,
    group: str | None,
    top: list[str],
    by_group: pd.DataFrame,
) -> pd.DataFrame:
    """The top members one by one plus one "other members" series (the VO total minus them,
    so the stack still sums to the VO's total)."""
    df = q.vo_usage_over_time(
        p, vo, resource, w.start, w.end, by="member", step=w.step, group=group, members=tuple(top)
    )
    total = by_group.groupby("time")["amount"].sum()
    mine = df.groupby("time")["amount"].sum().reindex(total.index, fill_value=0.0)
    rest = (total - mine).clip(lower=0.0)
    if (rest > 1e-9).any():
        df = pd.concat(
            [df, pd.DataFrame({"time": rest.index, "member": OTHERS, "amount": rest.to_numpy()})],
            ignore_index=True,
        )
    return df


@dataclass(frozen=True)
class _Chosen:
    """The VO (and group) a request shows, after the principal's scope is applied."""

    vos: list[str]
    vo: str | None
    groups: list[str]
    group: str | None
    names: dict[str, str]
    message: str = ""


def _choose(q: Query, p: Principal, vo: str | None, group: str | None) -> _Chosen:
    members = q.members(p)
    vos = visible_vos(members)
    if not vos:
        return _Chosen([], None, [], None, {}, NO_MEMBERS)
    vo = vo or vos[0]
    if vo not in vos:
        return _Chosen(vos, vo, [], None, {}, not_allowed(vo))
    in_vo = members[members["vo"] == vo]
    groups = sorted(set(in_vo["group"]))
    group = group if group in groups else None
    return _Chosen(vos, vo, groups, group, figures.member_names(in_vo))


def _resources(resource: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*TABLE_RESOURCES, resource]))


def vo_members(
    q: Query,
    p: Principal,
    w: Window,
    vo: str | None,
    group: str | None = None,
    resource: str = "cpu_seconds",
    text: str = "",
) -> tuple[str, pd.DataFrame] | None:
    """Only the member table of `vo_view` (the CSV download): (VO, rows), or None when the
    principal may see no VO or not this one."""
    chosen = _choose(q, p, vo, group)
    if chosen.message or chosen.vo is None:
        return None
    totals = q.vo_totals(
        p, chosen.vo, w.start, w.end, resources=_resources(resource), group=chosen.group
    )
    return chosen.vo, filter_members(member_table(totals, chosen.names, resource), text)


def vo_view(
    q: Query,
    p: Principal,
    w: Window,
    vo: str | None,
    group: str | None = None,
    resource: str = "cpu_seconds",
    text: str = "",
) -> VoView:
    """The VO page for principal `p`; `vo=None` picks the first VO it may see."""
    chosen = _choose(q, p, vo, group)
    if chosen.message or chosen.vo is None:
        return VoView(chosen.vos, chosen.vo, message=chosen.message)
    vo, group, names = chosen.vo, chosen.group, chosen.names
    totals = q.vo_totals(p, vo, w.start, w.end, resources=_resources(resource), group=group)
    view = VoView(chosen.vos, vo, chosen.groups)
    if totals.empty or not (totals["amount"] != 0).any():
        view.message = figures.EMPTY_USAGE if q.has_usage(p) else NO_DATA_YET
    title = figures.display_unit(resource).title
    by_group = q.vo_usage_over_time(
        p, vo, resource, w.start, w.end, by="group", step=w.step, group=group
    )
    groups = assign(chosen.groups)  # every group of the VO: the same colours in every range
    view.by_group = figures.usage_figure(
        by_group,
        resource,
        "group",
        w.start,
        w.end,
        w.step,
        title=f"{titled(p, title, vo)} by group",
        colours=groups,
    )
    ranked = member_table(totals, names, resource)
    view.members = filter_members(ranked, text)
    top = [m for m in ranked["member_id"].head(TOP_MEMBERS)]
    series = _member_series(q, p, vo, resource, w, group, top, by_group)
    others = f"Other members ({max(0, len(ranked) - len(top))})"
    view.by_member = figures.usage_figure(
        series,
        resource,
        "member",
        w.start,
        w.end,
        w.step,
        names={**names, OTHERS: others},
        title=(
            f"{titled(p, title)}"
            if p.role == "member"
            else f"{titled(p, title, vo)} by member (top {TOP_MEMBERS})"
        ),
        colours=assign(top),
    )
    view.shares = shares_figure(
        totals,
        resource,
        vo,
        groups,
        f"Your {in_sentence(title)} by group" if p.role == "member" else None,
    )
    view.facilities = facilities_table(totals, resource)
    mine = totals[totals["resource"] == resource]
    view.total = float(mine["amount"].sum())
    view.active = int(mine.loc[mine["amount"] > 0, "member"].nunique())
    if p.role != "member":  # the VO's share of all VOs an admin sees, of everyone for a manager
        scope = p if p.role == "facility_admin" else LOCAL_ADMIN
        every = q.usage_totals(scope, w.start, w.end, by=(), resources=(resource,))
        whole = float(every["amount"].sum())
        view.share_of_visible = 100 * view.total / whole if whole else None
        admin = p.role == "facility_admin"
        view.share_of = "Share of all VOs" if admin else "Share of the facility"
    return view
