"""The probe interface: small objects that turn one source into wire series and events.

A probe is anything with a `name`, a `state` ("ready", or why it cannot run) and
`collect(now) -> ProbeOutput`, in the spirit of prometheus_client collectors. The push
loop calls every ready probe once per interval and never lets one probe's failure stop
the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from afmon.collectors import wire

READY = "ready"


@dataclass
class ProbeOutput:
    series: list[wire.Series] = field(default_factory=list)
    events: list[wire.Event] = field(default_factory=list)

    def extend(self, other: ProbeOutput) -> None:
        self.series.extend(other.series)
        self.events.extend(other.events)


@runtime_checkable
class Probe(Protocol):
    name: str
    state: str

    def collect(self, now: float) -> ProbeOutput: ...


def sample(
    metric: str,
    labels: dict[str, str],
    time: float,
    value: float,
    *,
    unit: str | None = None,
    kind: str | None = None,
    created: float | None = None,
) -> wire.Series:
    """One series holding one sample; unit and kind come from wire.KNOWN_METRICS when known."""
    known = wire.KNOWN_METRICS.get(metric)
    if known is not None:
        if unit not in (None, known[0]) or kind not in (None, known[1]):
            raise ValueError(f"{metric} is a {known[1]} in {known[0]!r}")
        unit, kind = known
    if unit is None or kind not in ("counter", "gauge"):
        raise ValueError(f"{metric} needs a unit and a kind (counter or gauge)")
    return wire.Series(
        metric=metric,
        unit=unit,
        kind=kind,  # type: ignore[arg-type]
        labels=dict(labels),
        times=[time],
        values=[float(value)],
        created=created,
    )
