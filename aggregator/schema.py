"""Tables of the ledger, the identity map and the embedded time-series store.

Units live in the schema: every ledger row carries the unit of its amount,
and `RESOURCES` is the one catalog of what the ledger accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel


@dataclass(frozen=True)
class Resource:
    name: str
    unit: str
    title: str


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("cpu_seconds", "s", "CPU time"),
        Resource("cpu_hs23_seconds", "HS23·s", "CPU time normalised by HEPscore23"),
        Resource("memory_byte_seconds", "B·s", "Resident memory x time"),
        Resource("io_read_bytes", "B", "Bytes read (local IO)"),
        Resource("io_write_bytes", "B", "Bytes written (local IO)"),
        Resource("session_seconds", "s", "Interactive session time"),
        Resource("sessions", "1", "Interactive sessions started"),
        Resource("dask_cluster_seconds", "s", "Dask cluster lifetime"),
        Resource("dask_clusters", "1", "Dask clusters started"),
        Resource("batch_job_seconds", "s", "Batch job wall time"),
        Resource("batch_jobs", "1", "Batch jobs started"),
    )
}

UNMAPPED = "unmapped"
UNMAPPED_ISSUER = "afmon:unmapped"


class Member(SQLModel, table=True):
    """A VO member: the accounting key is (issuer, subject)."""

    id: str = Field(primary_key=True, description="issuer|subject")
    issuer: str
    subject: str
    vo: str = Field(index=True)
    grp: str = Field(description="Accounting group, e.g. /atlas/higgs")
    display_name: str
    groups: str = Field("[]", description="JSON list of the member's groups")


class Account(SQLModel, table=True):
    """A local account at a facility, mapped to a member for a time window."""

    id: int | None = Field(default=None, primary_key=True)
    facility: str = Field(index=True)
    local: str
    member_id: str = Field(foreign_key="member.id")
    valid_from: float = 0.0
    valid_until: float | None = None


class Usage(SQLModel, table=True):
    """The ledger: hourly usage per (facility, VO, group, member, resource)."""

    facility: str = Field(primary_key=True)
    vo: str = Field(primary_key=True)
    grp: str = Field(primary_key=True)
    member_id: str = Field(primary_key=True)
    resource: str = Field(primary_key=True)
    hour: int = Field(primary_key=True, description="Start of the UTC hour, epoch seconds")
    amount: float = 0.0
    unit: str

    __table_args__ = (
        Index("ix_usage_hour_vo", "hour", "vo"),
        Index("ix_usage_member_hour", "member_id", "hour"),
    )


class SeriesRow(SQLModel, table=True):
    """One series of the embedded store, with the state the ledger needs."""

    __tablename__ = "series"
    id: int | None = Field(default=None, primary_key=True)
    facility: str
    metric: str
    labels: str = Field(description="Canonical JSON of the labels")
    unit: str
    kind: str
    node: str
    local_user: str | None = None
    last_time: float | None = None
    last_value: float | None = None

    __table_args__ = (UniqueConstraint("facility", "metric", "labels", name="uq_series_key"),)


class Sample(SQLModel, table=True):
    """Raw samples of the embedded time-series store (kept for `retention_days`)."""

    series_id: int = Field(primary_key=True)
    time: float = Field(primary_key=True)
    value: float


class AppliedBatch(SQLModel, table=True):
    """Which (agent, seq) were applied: the exactly-once guard."""

    __tablename__ = "applied_batch"
    agent_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    facility: str
    received_at: float
    samples: int


class Agent(SQLModel, table=True):
    agent_id: str = Field(primary_key=True)
    facility: str
    node: str
    last_seen: float
    last_seq: int
    batches: int = 0
    samples: int = 0


class Node(SQLModel, table=True):
    """A node's capacity, as its agent last reported it."""

    facility: str = Field(primary_key=True)
    node: str = Field(primary_key=True)
    cpu_cores: float | None = None
    memory_bytes: float | None = None
    hepscore23_per_core: float | None = None
    cpu_busy_ratio: float | None = None
    updated: float = 0.0


class EventRow(SQLModel, table=True):
    """Sessions, Dask clusters and batch jobs; accounted once, when their end is known."""

    __tablename__ = "event"
    facility: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    id: str = Field(primary_key=True)
    node: str
    local_user: str
    member_id: str
    start: float
    end: float | None = None
    attrs: str = "{}"

    __table_args__ = (Index("ix_event_member_start", "member_id", "start"),)
