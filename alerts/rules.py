"""Alert rules as data: the schema (pydantic), duration parsing and the YAML loader.

A rule compares one signal (`afmon.aggregator.query.signals`) with a threshold. Loading
refuses a bad file with an error that names the file, the rule and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from afmon.aggregator.metrics.catalog import series_names
from afmon.aggregator.query.signals import PROCESS_SIGNALS, SIGNALS

DEFAULT_RULES = Path(__file__).parent / "rules" / "afmon.yaml"
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_METRIC = re.compile(r"\b(afmon_[a-zA-Z0-9_]+)")
KNOWN_SIGNALS = (*SIGNALS, *PROCESS_SIGNALS)
OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


class RuleError(ValueError):
    """A rule file that cannot be used; the message names file, rule and field."""


def parse_duration(text: str) -> float:
    """'90s', '10m', '1h30m' -> seconds (Prometheus' units, without d/w/y)."""
    m = _DURATION.match(text.strip()) if text.strip() else None
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m or 1h30m")
    h, mi, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="The alertname")
    signal: str
    op: Literal[">", ">=", "<", "<="]
    threshold: float
    clear: float | None = Field(
        None, description="A firing alert resolves when the value no longer passes `op clear`"
    )
    for_: str = Field("0s", alias="for")
    severity: Literal["info", "warning", "critical"]
    summary: str = Field(min_length=1)
    description: str = Field(min_length=1)
    prometheus: str | None = Field(
        None, description="The signal as PromQL over catalog metrics; exported when given"
    )

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        if value not in KNOWN_SIGNALS:
            raise ValueError(f"unknown signal {value!r}; known: {', '.join(KNOWN_SIGNALS)}")
        return value

    @field_validator("for_")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("prometheus")
    @classmethod
    def _catalog_metrics(cls, value: str | None) -> str | None:
        if value is None:
            return None
        known = series_names()
        unknown = sorted({m for m in _METRIC.findall(value) if m not in known})
        if unknown:
            raise ValueError(f"uses metrics not in the catalog: {', '.join(unknown)}")
        if not _METRIC.search(value):
            raise ValueError("names no afmon metric")
        return value

    @model_validator(mode="after")
    def _clear_side(self) -> Rule:
        if self.clear is not None:
            upward = self.op in (">", ">=")
            if (upward and self.clear > self.threshold) or (
                not upward and self.clear < self.threshold
            ):
                side = "at or below" if upward else "at or above"
                raise ValueError(
                    f"clear {self.clear} must be {side} the threshold {self.threshold} "
                    "(it is the level at which a firing alert resolves)"
                )
        return self

    @property
    def for_seconds(self) -> float:
        return parse_duration(self.for_)

    @property
    def clear_level(self) -> float:
        return self.threshold if self.clear is None else self.clear

    def breached(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    def still_firing(self, value: float) -> bool:
        return OPS[self.op](value, self.clear_level)


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]

    @model_validator(mode="after")
    def _unique(self) -> RuleFile:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        return self


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{source}: not valid YAML: {exc}") from None
    try:
        return RuleFile.model_validate(data).rules
    except ValidationError as exc:
        raise RuleError(f"{source}: {_describe(exc, data)}") from None


def load_rules(path: Path | None = None) -> list[Rule]:
    """The rules of one YAML file (the packaged rules by default)."""
    path = path or DEFAULT_RULES
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_rules(text, str(path))


def _describe(exc: ValidationError, data: object) -> str:
    """'rule AfmonX (rules[3]) field threshold: Input should be a valid number', one per line."""
    out = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = "file"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            name = "?"
            if isinstance(data, dict) and isinstance(data.get("rules"), list):
                item = data["rules"][loc[1]]
                name = item.get("name", "?") if isinstance(item, dict) else "?"
            field = ".".join(str(x) for x in loc[2:]) or "(rule)"
            where = f"rule {name} (rules[{loc[1]}]) field {field}"
        elif loc:
            where = f"field {'.'.join(str(x) for x in loc)}"
        out.append(f"{where}: {err['msg']}")
    return "; ".join(out)
