"""What a report counts: every resource of the catalog, plus hour-based forms of the
time-integrated ones (core-hours, GB-hours), derived generically from names and units."""

from __future__ import annotations

import math
from dataclasses import dataclass

from afmon.aggregator.store.schema import RESOURCES

HOUR = 3600.0
GB = 1e9
LEVELS: dict[str, tuple[str, ...]] = {
    "member": ("facility", "vo", "group", "member"),
    "group": ("facility", "vo", "group"),
    "vo": ("facility", "vo"),
    "facility": ("facility",),
}


@dataclass(frozen=True)
class Quantity:
    """A report column: the ledger amount of `resource` / `divisor`."""

    name: str
    unit: str
    title: str
    resource: str
    divisor: float = 1.0

    @property
    def derived(self) -> bool:
        return self.name != self.resource


def _hours_form(name: str, unit: str, title: str) -> Quantity | None:
    if name.endswith("_byte_seconds") and unit == "B·s":
        stem = name.removesuffix("_byte_seconds")
        return Quantity(f"{stem}_gb_hours", "GB·h", f"{title} (GB-hours)", name, GB * HOUR)
    if name.endswith("_seconds") and (unit == "s" or unit.endswith("·s")):
        new_unit = "h" if unit == "s" else unit.removesuffix("s") + "h"
        return Quantity(
            name.removesuffix("_seconds") + "_hours", new_unit, f"{title} (hours)", name, HOUR
        )
    return None


def quantities() -> list[Quantity]:
    """Every catalog resource, each followed by its hours form when it has one."""
    out: list[Quantity] = []
    for r in RESOURCES.values():
        out.append(Quantity(r.name, r.unit, r.title, r.name))
        hours = _hours_form(r.name, r.unit, r.title)
        if hours is not None and hours.name not in RESOURCES:
            out.append(hours)
    return out


def num(x: float) -> int | float:
    """A number as it is written: integral values as int, others as the shortest float."""
    x = float(x)
    if math.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return int(x)
    return x


def ratio(cur: float, prev: float) -> float | None:
    """Relative change against the previous week, or None when there was nothing before."""
    if prev == 0:
        return None
    return round((cur - prev) / prev, 6)
