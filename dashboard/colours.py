"""One colour per name in each dimension (VO, group, member, source, ...), keyed by the name and
never by rank, so that a VO has the same colour on every page, in every range and every chart.

A name's preferred slot in `PALETTE` is a stable hash of the name (crc32, the same in every
process). `assign` places the names of one dimension (all of them, in sorted order, so the
result does not depend on what a range shows) and moves a name whose slot is taken to the next
free one: up to `len(PALETTE)` names get a colour each, and a new name moves only those it
collides with. `chart_colours` resolves the traces of one chart once more, so that no two of
them ever share a colour; a chart draws at most `len(PALETTE)` traces one by one and sums the
rest into an explicit "others" trace in `OTHERS_COLOUR`, a neutral grey outside the palette.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

# Okabe-Ito: a qualitative palette that stays readable for the common colour-vision deficiencies
PALETTE: tuple[str, ...] = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
)
OTHERS_COLOUR = "#A6AEB7"  # "everything else": grey, never one of the palette's colours


def slot(name: str) -> int:
    """The palette slot a name prefers: stable across processes (unlike `hash`)."""
    return zlib.crc32(name.encode()) % len(PALETTE)


def _place(names: Iterable[str], taken: dict[str, str]) -> dict[str, str]:
    """Each name its preferred colour, or the next free one after it; once every colour is
    taken, the preferred one (shared: the caller folds such names into "others")."""
    used = set(taken.values())
    out = dict(taken)
    n = len(PALETTE)
    for name in names:
        if name in out:
            continue
        first = slot(name)
        free = [PALETTE[(first + k) % n] for k in range(n) if PALETTE[(first + k) % n] not in used]
        out[name] = free[0] if free else PALETTE[first]
        used.add(out[name])
    return out


@lru_cache(maxsize=512)
def _assign(names: tuple[str, ...]) -> Mapping[str, str]:
    return _place(names, {})


def assign(names: Iterable[str]) -> dict[str, str]:
    """The colours of every name of a dimension: name -> colour; distinct for up to
    `len(PALETTE)` names, and the same for the same set of names, in any order."""
    return dict(_assign(tuple(sorted(set(names)))))


def chart_colours(shown: Sequence[str], preferred: Mapping[str, str]) -> dict[str, str]:
    """The colours of one chart's traces: each keeps its `preferred` colour unless a trace
    before it (in name order) has it already; those, and names without one, take free colours.
    Distinct as long as `len(shown) <= len(PALETTE)` (the charts fold the rest into others)."""
    keep: dict[str, str] = {}
    for name in sorted(set(shown)):
        colour = preferred.get(name)
        if colour is not None and colour in PALETTE and colour not in keep.values():
            keep[name] = colour
    return _place(sorted(set(shown)), keep)
