"""The identity map: local account at a facility -> VO member, with effective dates.

The file (TOML) is the source of truth; `load_identity_file` validates it and
writes it into the database, and `IdentityMap` resolves accounts at ingest.
What cannot be mapped is accounted to the facility's explicit `unmapped`
member, never dropped.
"""

from __future__ import annotations

import bisect
import json
import math
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import Engine, delete
from sqlmodel import Session, select

from afmon.aggregator.store.schema import UNMAPPED, UNMAPPED_ISSUER, Account, Member


class IdentityError(ValueError):
    pass


def _epoch(value: datetime | date | str | float | int | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):  # a TOML date: midnight UTC
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if value.tzinfo is None:
        raise ValueError("dates must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value.timestamp()


class AccountEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    facility: str
    local: str
    valid_from: float = 0.0
    valid_until: float | None = None

    @field_validator("valid_from", "valid_until", mode="before")
    @classmethod
    def _dates(cls, value: datetime | str | float | None) -> float | None:
        return _epoch(value)

    @model_validator(mode="after")
    def _window(self) -> AccountEntry:
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class MemberEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vo: str
    subject: str
    display_name: str
    groups: list[str] = []
    group: str | None = None
    institution: str | None = Field(None, min_length=1, max_length=128)
    accounts: list[AccountEntry] = []


class VOEntry(BaseModel):
    """A VO and its token issuer. The issuer is also trusted for sign-in and bearer tokens,
    so it is written once, here; the other keys are that issuer's roles and client, read and
    checked by `afmon.aggregator.core.issuers.identity_map_issuers` (docs/identity.md)."""

    model_config = ConfigDict(extra="forbid")
    issuer: str
    manager_groups: list[str] = []
    admin_groups: list[str] = []
    admin_facility: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    jwks_url: str | None = None


class IdentityFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vos: dict[str, VOEntry]
    members: list[MemberEntry] = []

    @model_validator(mode="after")
    def _consistent(self) -> IdentityFile:
        windows: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
        subjects: dict[tuple[str, str], int] = {}
        for i, m in enumerate(self.members):
            if m.vo not in self.vos:
                raise ValueError(f"members[{i}]: VO {m.vo!r} is not declared under [vos]")
            first = subjects.setdefault((m.vo, m.subject), i)
            if first != i:
                raise ValueError(
                    f"members[{i}]: subject {m.subject!r} of VO {m.vo!r} "
                    f"is already members[{first}]"
                )
            for j, a in enumerate(m.accounts):
                until = math.inf if a.valid_until is None else a.valid_until
                windows.setdefault((a.facility, a.local), []).append(
                    (a.valid_from, until, f"members[{i}].accounts[{j}]")
                )
        for (facility, local), spans in windows.items():
            spans.sort()
            for (_, end, where), (start, _, other) in zip(spans, spans[1:], strict=False):
                if start < end:
                    raise ValueError(
                        f"{other}: account {local!r} at {facility!r} is already mapped by "
                        f"{where} for part of that time; effective dates must not overlap"
                    )
        return self


@dataclass(frozen=True, slots=True)
class MemberRef:
    id: str
    vo: str
    grp: str


def member_id(issuer: str, subject: str) -> str:
    return f"{issuer}|{subject}"


def unmapped_member(facility: str) -> MemberRef:
    return MemberRef(member_id(UNMAPPED_ISSUER, facility), UNMAPPED, UNMAPPED)


def parse_identity_file(path: Path) -> IdentityFile:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise IdentityError(f"{path}: not valid TOML: {exc}") from None
    try:
        return IdentityFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise IdentityError(f"{path}: {where}: {first['msg']}") from None


def load_identity_file(engine: Engine, path: Path) -> int:
    """Replace the identity map in the database with the file's; returns the account count."""
    data = parse_identity_file(path)
    members: list[Member] = []
    accounts: list[Account] = []
    for m in data.members:
        issuer = data.vos[m.vo].issuer
        mid = member_id(issuer, m.subject)
        grp = m.group or (m.groups[-1] if m.groups else f"/{m.vo}")
        members.append(
            Member(
                id=mid,
                issuer=issuer,
                subject=m.subject,
                vo=m.vo,
                grp=grp,
                display_name=m.display_name,
                groups=json.dumps(m.groups),
                institution=m.institution or "",
            )
        )
        for a in m.accounts:
            accounts.append(
                Account(
                    facility=a.facility,
                    local=a.local,
                    member_id=mid,
                    valid_from=a.valid_from,
                    valid_until=a.valid_until,
                )
            )
    with Session(engine) as session:
        session.exec(delete(Account))
        for member in members:
            session.merge(member)
        session.flush()  # members first: accounts refer to them
        session.add_all(accounts)
        session.commit()
    return len(accounts)


class IdentityMap:
    """In-memory resolver built from the database's accounts and members."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._by_account: dict[
            tuple[str, str], tuple[list[float], list[tuple[float | None, MemberRef]]]
        ] = {}
        self._unmapped_refs: dict[str, MemberRef] = {}
        self.reload()

    def reload(self) -> None:
        with Session(self._engine) as session:
            members = {
                m.id: MemberRef(m.id, m.vo, m.grp) for m in session.exec(select(Member)).all()
            }
            rows = session.exec(select(Account).order_by(Account.valid_from)).all()
        table: dict[tuple[str, str], tuple[list[float], list[tuple[float | None, MemberRef]]]] = {}
        for a in rows:
            starts, spans = table.setdefault((a.facility, a.local), ([], []))
            starts.append(a.valid_from)
            spans.append((a.valid_until, members[a.member_id]))
        self._by_account = table

    def resolve(self, facility: str, local: str, when: float) -> MemberRef:
        return self.resolve_span(facility, local, when)[0]

    def resolve_span(
        self, facility: str, local: str, when: float
    ) -> tuple[MemberRef, float, float]:
        """The member of an account at `when`, and the window [from, until) in which that
        answer holds, so that callers resolve once per window rather than once per sample."""
        entry = self._by_account.get((facility, local))
        if entry is None:
            return self._unmapped(facility), -math.inf, math.inf
        starts, spans = entry
        i = bisect.bisect_right(starts, when) - 1
        if i >= 0:
            until, ref = spans[i]
            if until is None or when < until:
                return ref, starts[i], math.inf if until is None else until
        lo = -math.inf if i < 0 else (spans[i][0] or -math.inf)
        hi = starts[i + 1] if i + 1 < len(starts) else math.inf
        return self._unmapped(facility), lo, hi

    def _unmapped(self, facility: str) -> MemberRef:
        ref = self._unmapped_refs.get(facility)
        if ref is None:
            ref = self._unmapped_refs[facility] = unmapped_member(facility)
        return ref
