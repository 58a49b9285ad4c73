"""Tables of the ledger, the identity map and the embedded time-series store.

Units live in the schema: every ledger row carries the unit of its amount,
and `RESOURCES` is the one catalog of what the ledger accounts.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from afmon.collectors.wire import GPU_MODELS


@dataclass(frozen=True)
class Resource:
    name: str
    unit: str
    title: str


_SOURCES = ("local", "cache", "remote")  # data sources: roles of XRootD servers
RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("cpu_seconds", "s", "CPU time"),
        Resource("cpu_hs23_seconds", "HS23·s", "CPU time normalised by HEPscore23"),
        Resource("memory_byte_seconds", "B·s", "Resident memory x time"),
        Resource("io_read_bytes", "B", "Bytes read (local IO)"),
        Resource("io_write_bytes", "B", "Bytes written (local IO)"),
        # XRootD data access by source (docs/data.md); io_* above is local POSIX IO
        *(Resource(f"data_read_{s}_bytes", "B", f"Bytes read via XRootD, {s}") for s in _SOURCES),
        *(
            Resource(f"data_written_{s}_bytes", "B", f"Bytes written via XRootD, {s}")
            for s in _SOURCES
        ),
        Resource("data_files_opened", "1", "Files opened via XRootD"),
        Resource(
            "data_unverified_bytes",
            "B",
            "Bytes read or written via XRootD under a user name no authentication vouched for "
            "(also counted in data_read_*/data_written_*)",
        ),
        Resource("session_seconds", "s", "Interactive session time"),
        Resource("sessions", "1", "Interactive sessions started"),
        Resource("dask_cluster_seconds", "s", "Dask cluster lifetime"),
        Resource("dask_clusters", "1", "Dask clusters started"),
        Resource("batch_job_seconds", "s", "Batch job wall time"),
        Resource("batch_jobs", "1", "Batch jobs started"),
        Resource("gpu_allocated_seconds", "s", "GPU time held (allocated)"),
        Resource("gpu_active_seconds", "s", "GPU time busy (held x busy ratio)"),
        Resource("gpu_energy_joules", "J", "Energy of the GPUs held"),
        Resource("gpu_idle_seconds", "s", "GPU time held while idle"),
        *(
            Resource(f"gpu_{m}_{k}_seconds", "s", f"GPU time {k} ({m.upper()})")
            for m in GPU_MODELS
            for k in ("allocated", "active")
        ),
        Resource("batch_wall_core_seconds", "s", "Batch wall time x allocated cores"),
        Resource("batch_cpu_seconds", "s", "Batch CPU time (user + system)"),
        Resource("batch_gpu_seconds", "s", "Batch wall time x allocated GPUs"),
        Resource("batch_cpu_hs23_seconds", "HS23·s", "Batch CPU time normalised by HEPscore23"),
        Resource(
            "batch_wall_core_hs23_seconds",
            "HS23·s",
            "Batch wall core time normalised by HEPscore23",
        ),
        Resource("spawn_failures", "1", "Server starts that failed, timed out or were stopped"),
        Resource("dask_worker_seconds", "s", "Dask worker lifetime"),
        Resource("dask_worker_core_seconds", "core·s", "Dask worker threads x lifetime"),
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
    institution: str = Field(
        "",
        sa_column_kwargs={"server_default": ""},
        description="Home institution from the identity file; '' unknown",
    )


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
        # covering index of the dashboard's and report's range queries (migration 0002)
        Index(
            "ix_usage_resource_hour_cover",
            "resource",
            "hour",
            "vo",
            "grp",
            "member_id",
            "facility",
            "amount",
        ),
    )


class UsageDay(SQLModel, table=True):
    """The ledger summed per UTC day, kept with it in the same transaction: readers of whole
    days (totals, daily steps) read 24 times fewer rows. Same key, `day` for `hour`."""

    __tablename__ = "usage_day"
    facility: str = Field(primary_key=True)
    vo: str = Field(primary_key=True)
    grp: str = Field(primary_key=True)
    member_id: str = Field(primary_key=True)
    resource: str = Field(primary_key=True)
    day: int = Field(primary_key=True, description="Start of the UTC day, epoch seconds")
    amount: float = 0.0
    unit: str

    __table_args__ = (
        Index(
            "ix_usage_day_cover", "resource", "day", "vo", "grp", "member_id", "facility", "amount"
        ),
    )


class BatchUsage(SQLModel, table=True):
    """The batch resources of the ledger broken down by the scheduler's accounting dimensions
    (Slurm account / HTCondor accounting group, QoS, partition): sites report batch usage
    by them. Written with `usage` by the same rule, so per member, resource and hour the sum
    over the dimensions is the `usage` amount (docs/batch.md). "" where a job had none."""

    __tablename__ = "batch_usage"
    facility: str = Field(primary_key=True)
    vo: str = Field(primary_key=True)
    grp: str = Field(primary_key=True)
    member_id: str = Field(primary_key=True)
    account: str = Field(primary_key=True, description="Slurm account or HTCondor AcctGroup")
    qos: str = Field(primary_key=True)
    partition: str = Field(primary_key=True)
    resource: str = Field(primary_key=True)
    hour: int = Field(primary_key=True, description="Start of the UTC hour, epoch seconds")
    amount: float = 0.0
    unit: str

    __table_args__ = (
        # covering index of the range reads (query/batch.py): by hour, scoped by VO or member
        Index(
            "ix_batch_usage_hour_cover",
            "hour",
            "vo",
            "member_id",
            "facility",
            "grp",
            "account",
            "qos",
            "partition",
            "resource",
            "amount",
        ),
    )


class LatencyBucket(SQLModel, table=True):
    """Latency histograms: per hour, observations counted in fixed buckets (`le` seconds,
    upper bound inclusive, inf for the last) with their sum, so any window merges exactly."""

    __tablename__ = "latency"
    facility: str = Field(primary_key=True)
    vo: str = Field(primary_key=True)
    grp: str = Field(primary_key=True)
    member_id: str = Field(primary_key=True)
    kind: str = Field(primary_key=True, description="time_to_session, batch_queue_wait, ...")
    profile: str = Field(primary_key=True)
    hour: int = Field(primary_key=True, description="Start of the UTC hour, epoch seconds")
    le: float = Field(primary_key=True, description="Bucket upper bound in seconds")
    count: int = 0
    sum_seconds: float = 0.0

    __table_args__ = (Index("ix_latency_kind_hour", "kind", "hour"),)


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
    first_time: float | None = Field(
        default=None, description="Time of its first sample (0: earlier than any kept)"
    )

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
    seq: int = Field(primary_key=True, sa_type=BigInteger)  # 63-bit content ids (scale.md)
    facility: str
    received_at: float
    samples: int


class TsdbOutbox(SQLModel, table=True):
    """Raw samples not yet written to the InfluxDB-API store (aggregator/store/tsdb.py)."""

    __tablename__ = "tsdb_outbox"
    id: int | None = Field(default=None, primary_key=True)
    created: float
    lines: str = Field(description="Line protocol, ms timestamps (rows staged before 0004)")
    points: bytes | None = Field(
        default=None,
        sa_type=LargeBinary,
        description="zlib'd JSON [[line-protocol head, [[value, ms], ...]], ...] (store/tsdb.py)",
    )
    samples: int


class Agent(SQLModel, table=True):
    agent_id: str = Field(primary_key=True)
    facility: str
    node: str
    last_seen: float
    last_seq: int = Field(sa_type=BigInteger)
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


class AlertRow(SQLModel, table=True):
    """Alerts evaluated by alerts/: pending and firing now, resolved ones as history."""

    __tablename__ = "alert"
    rule: str = Field(primary_key=True)
    labels: str = Field(primary_key=True, description="Canonical JSON of the labels")
    active_since: float = Field(primary_key=True)
    status: str = Field(index=True, description="pending, firing or resolved")
    severity: str
    facility: str | None = None
    vo: str | None = None
    value: float
    fired_at: float | None = None
    resolved_at: float | None = None
    summary: str = ""
    description: str = ""
    signal: str | None = Field(None, description="the signal its rule compares (its unit)")


class AgentToken(SQLModel, table=True):
    """An agent credential: bound to one facility, stored only as a hash, revocable."""

    __tablename__ = "agent_token"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    facility: str
    token_sha256: str = Field(unique=True)
    created: float
    revoked: float | None = None


class QuarantineRow(SQLModel, table=True):
    """A record (series or event) refused at ingest while the rest of its batch was applied:
    kept as sent, with the reason, until replayed or dropped (`afmon quarantine`)."""

    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_facility_reason", "facility", "reason"),)
    id: int | None = Field(default=None, primary_key=True)
    facility: str
    agent_id: str
    seq: int = Field(sa_type=BigInteger)
    node: str
    received_at: float
    kind: str = Field(description="series or event")
    reason: str = Field(description="machine-readable code, e.g. future, over_limit_nodes")
    field: str
    message: str
    record: str = Field(description="the series or event as sent (wire JSON)")
    replayed_at: float | None = None


class LedgerChange(SQLModel, table=True):
    """Which ledger hours changed: every ingest transaction that adds to an hour of the
    ledger (usage or latency) bumps its version. A facility publishes an hour upstream when
    its version is newer than the one it sent (docs/federation.md)."""

    __tablename__ = "ledger_change"
    facility: str = Field(primary_key=True)
    hour: int = Field(primary_key=True, description="Start of the UTC hour, epoch seconds")
    version: int = Field(sa_type=BigInteger)


class FederationSent(SQLModel, table=True):
    """The version of each ledger hour an upstream afmon acknowledged (the durable cursor of
    publishing)."""

    __tablename__ = "federation_sent"
    upstream: str = Field(primary_key=True, description="the upstream's URL")
    facility: str = Field(primary_key=True)
    hour: int = Field(primary_key=True)
    version: int = Field(sa_type=BigInteger)


class FederationSource(SQLModel, table=True):
    """Upstream side: a facility that publishes to this afmon, and how fresh it is."""

    __tablename__ = "federation_source"
    facility: str = Field(primary_key=True)
    last_hour: int | None = Field(None, description="the newest hour received")
    received_at: float = Field(description="when the last publication arrived (UNIX time)")
    hours: int = Field(0, sa_type=BigInteger, description="hour publications received")


class PlannedDowntime(SQLModel, table=True):
    """A downtime an admin declared (`afmon downtime add`): availability figures tell it
    apart from unplanned down time (docs/availability.md)."""

    __tablename__ = "planned_downtime"
    id: int | None = Field(default=None, primary_key=True)
    facility: str = Field(index=True)
    service: str
    start: float
    end: float
    reason: str = ""
    created: float
