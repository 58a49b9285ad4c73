"""Settings of the aggregator process: one class, `AFMON_` environment prefix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from afmon.aggregator.core.issuers import IssuerConfig, identity_map_issuers
from afmon.aggregator.core.latency import DEFAULT_SLO_SECONDS
from afmon.aggregator.core.upstreams import Upstream

DEFAULT_DATABASE = "sqlite:///afmon.sqlite"


class ServerSettings(BaseSettings):
    """Everything `afmon serve` needs. Built once at start and passed into factories."""

    model_config = SettingsConfigDict(env_prefix="AFMON_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int = Field(8600, description="Port the server listens on.")
    database_url: str = Field(
        DEFAULT_DATABASE,
        description="SQLAlchemy URL of the ledger and the embedded time-series store "
        "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB).",
    )
    facility_tokens: dict[str, str] = Field(
        default_factory=dict,
        description='Agent bearer token per facility, as JSON: {"my-af": "s3cret"}. '
        "A token may only write its own facility's data.",
    )
    identity_file: Path | None = Field(
        None, description="TOML file mapping local accounts to VO members (see docs/identity.md)."
    )
    retention_days: float = Field(
        30.0, description="Raw samples older than this are deleted; the ledger keeps everything."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, description="Largest ingest body accepted, compressed or not (else 413)."
    )
    max_future_skew_seconds: float = Field(
        300.0, description="Samples further than this in the future are refused (agent clock skew)."
    )
    gauge_max_gap_seconds: float = Field(
        600.0,
        description="A gauge (such as memory) is integrated between two samples only when they "
        "are at most this far apart; a longer gap is treated as no data.",
    )
    late_sample_window_seconds: float = Field(
        86400.0,
        gt=0,
        description="A sample older than its series' newest arrives late: within this window "
        "it is stored and the hours it touches are recomputed (the ledger does not depend on "
        "arrival order); a series record with a sample further back is refused (reason "
        "`too_old`) and quarantined. At most AFMON_RETENTION_DAYS.",
    )
    capacity_slack: float = Field(
        0.5,
        ge=0,
        description="A user's CPU time growing faster than the node's cores allow, or memory "
        "beyond the node's, by more than this share is refused (reason `beyond_capacity`).",
    )
    default_hepscore23_per_core: float = Field(
        10.0, description="HEPscore23 per core used for nodes that have not reported their own."
    )
    gpu_model_factors: dict[str, float] = Field(
        default_factory=dict,
        description='Normalisation factor per GPU model class, as JSON: {"h100": 2.0}; '
        "normalised GPU hours = factor x allocated hours; a model not listed counts 1.0.",
    )
    local_mode: bool = Field(
        False,
        description="Demo only: readers are not authenticated and pick their principal "
        "(member, VO manager, facility admin) in the dashboard.",
    )
    oidc_issuers: dict[str, IssuerConfig] = Field(
        default_factory=dict,
        description="Trusted token issuers, as JSON: "
        '{"https://atlas-auth.cern.ch/": {"vo": "atlas", "manager_groups": ["/atlas/af-managers"]}}'
        "; each may name its jwks_url (default: from its OpenID configuration), the groups "
        "that make a VO manager (`manager_groups`) and a facility admin (`admin_groups`, "
        "granted only when this issuer asserts them), the `admin_facility` they administer, "
        "and the dashboard's own OIDC client at it (`client_id`, `client_secret`). Optional "
        "for issuers the identity map names (`[vos.X] issuer`): those are trusted as they are "
        "written there (docs/identity.md); naming one here too overrides the fields it sets, "
        "and a different VO is refused.",
    )
    oidc_audience: str = Field(
        "afmon",
        description="The `aud` that readers' tokens must carry for this service; a token from "
        "an issuer with its own `client_id` may carry that client id instead.",
    )
    admin_groups: list[str] = Field(
        default_factory=list,
        description="No longer accepted (refused at start-up): a group grants facility admin "
        "only with the issuer that asserts it; list it in that issuer's `admin_groups` in "
        "AFMON_OIDC_ISSUERS.",
    )
    admin_facility: str | None = Field(
        None,
        description="The facility that token admins administer, unless their issuer names its "
        "own `admin_facility`; unset: every facility.",
    )
    oidc_client_id: str | None = Field(
        None,
        description="OIDC client id of the dashboard's sign-in, for issuers without their own "
        "`client_id`; unset: no sign-in.",
    )
    oidc_client_secret: SecretStr | None = Field(
        None, description="Its client secret (issuers with their own `client_secret` use that)."
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Key that signs sign-in sessions (at least 32 random characters); the same "
        "on every worker. Required with sign-in outside local mode.",
    )
    public_url: str | None = Field(
        None,
        description="The URL users reach afmon at (for the sign-in redirect); "
        "default: taken from each request.",
    )
    # -- /metrics (aggregator/web/scrape.py, docs/security.md) --
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token a scraper sends to read /metrics (Prometheus scrape config "
        "`authorization: {credentials_file: ...}`); at least 24 random characters.",
    )
    metrics_username: str | None = Field(
        None, description="Basic-auth user a scraper may read /metrics with (`basic_auth`)."
    )
    metrics_password: SecretStr | None = Field(None, description="Its password.")
    metrics_public: bool = Field(
        False,
        description="Serve /metrics to anyone who reaches the port (always so in local mode); "
        "otherwise a scrape needs AFMON_METRICS_TOKEN or the basic-auth credentials.",
    )
    metrics_per_vo: bool = Field(
        True,
        description="Include the per-(facility, VO) families in /metrics (usage totals, latency "
        "histograms); false: operational families only (ingest, nodes, agents, GPUs, outbox).",
    )
    # -- cardinality limits (aggregator/ingest/limits.py, docs/security.md) --
    limit_series_per_batch: int = Field(
        20_000, gt=0, description="Series one batch may carry (else the batch is refused, 422)."
    )
    limit_labels_per_series: int = Field(
        16, gt=0, description="Labels one series may carry (else the batch is refused, 422)."
    )
    limit_nodes_per_facility: int = Field(
        10_000,
        gt=0,
        description="Distinct nodes one facility may report; a batch that would add more is "
        "refused (422) and counted as outcome `over_limit`.",
    )
    limit_gpus_per_facility: int = Field(
        20_000, gt=0, description="Distinct GPUs (and MIG units) one facility may report."
    )
    max_sample_value: float = Field(
        1e18,
        gt=0,
        description="A sample whose absolute value is beyond this is refused (reason "
        "`value_too_large`): a counter jumping to 1e308 would make totals infinite.",
    )
    max_event_age_days: float = Field(
        400.0,
        gt=0,
        description="An event (session, job) that started longer ago is refused (reason "
        "`too_old`): a start in 1970 would spread over half a million ledger hours.",
    )
    max_event_duration_days: float = Field(
        90.0,
        gt=0,
        description="An ended event (session, job, cluster) that lasted longer is refused "
        "(reason `too_long`): batch systems, hub cullers and Dask clusters end far sooner.",
    )
    quarantine_keep: int = Field(
        100_000,
        gt=0,
        description="Refused records kept per facility for `afmon quarantine` (the oldest go "
        "first beyond it).",
    )
    metrics_node_silence_seconds: float = Field(
        86_400.0,
        gt=0,
        description="A node (or its agent, or its GPUs) that has reported nothing for this long "
        "leaves the per-node families of /metrics, as a stale target does.",
    )
    ingest_rate_per_agent: float = Field(
        20.0, gt=0, description="Batches per second one agent may post (bursts up to 5 s of it)."
    )
    federation_upstreams: list[Upstream] = Field(
        default_factory=list,
        description="Upstream afmons this facility publishes its ledger hours to, as JSON: "
        '[{"url": "https://vo.example.org", "token": "...", "vos": ["atlas"], '
        '"level": "member"}] (vos empty: every VO; level member or group); docs/federation.md.',
    )
    federation_peers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Upstream side: the facilities that may publish here and their "
        'credentials, as JSON: {"af-a": "<token>"}; docs/federation.md.',
    )
    gpu_profile_pattern: str = Field(
        r"(?i)gpu|a100|h100|h200|mig",
        description="Regular expression naming the JupyterHub profiles that give a GPU: their "
        "time-to-session is the wait for a GPU session (docs/gpu.md, Access breadth).",
    )
    public_card: bool = Field(
        False,
        description="Serve the public facility card at /public and /public.json, without "
        "sign-in: aggregates only (docs/public-card.md).",
    )
    public_card_min_members: int = Field(
        5,
        ge=1,
        description="The public card folds a VO or group with fewer active members than this "
        "into `other` (and leaves the fold out when it has fewer too).",
    )
    federation_interval_seconds: float = Field(
        60.0, gt=0, description="How often changed ledger hours are published upstream."
    )
    ingest_group_commit: int | None = Field(
        None,
        ge=1,
        description="At most this many batches of concurrent requests are applied in one "
        "transaction and committed together (one fsync; each batch in a savepoint of its "
        "own). Default: 32 on SQLite, 1 (off) on PostgreSQL, where several workers commit "
        "in parallel and groups could lock rows in different orders.",
    )
    dashboard: bool = Field(
        True, description="Serve the Dash app at /; false for API-only workers."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    alert_rules_file: Path | None = Field(
        None, description="YAML alert rules (see docs/alerts.md); default: alerts/rules/afmon.yaml."
    )
    alert_interval_seconds: float = Field(
        60.0, ge=0, description="How often alert rules are evaluated; 0 turns evaluation off."
    )
    alert_webhook_url: str | None = Field(
        None, description="Alertmanager-compatible webhook that receives alert transitions."
    )
    alertmanager_urls: list[str] = Field(
        default_factory=list,
        description="Alertmanagers that afmon pushes its alerts to (POST <url>/api/v2/alerts), "
        'as JSON: ["http://am1:9093", "http://am2:9093"]; see docs/alerts.md.',
    )
    alert_mail_to: list[str] = Field(
        default_factory=list,
        description='Recipients of alert mail (through AFMON_SMTP_HOST), as JSON: ["ops@af.org"].',
    )
    latency_slo_seconds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SLO_SECONDS),
        description="Target per latency kind, as JSON (the seed's: time_to_session 10, "
        "time_to_first_worker 60, time_to_scale_up 300, time_to_finish 3600); see "
        "docs/interactive.md.",
    )
    # -- weekly report (aggregator/report, docs/report.md) --
    report_dir: Path | None = Field(
        None, description="Where the scheduled weekly report is written; unset: no schedule."
    )
    report_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = Field(
        "mon", description="UTC weekday of the scheduled weekly report."
    )
    report_time: str = Field(
        "06:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="UTC time (HH:MM) of it."
    )
    report_formats: str = Field("csv,json,html,apel", description="Formats it writes.")
    report_check_seconds: float = Field(
        60.0, gt=0, description="How often the server checks whether a report is due."
    )
    report_silence_seconds: float = Field(
        900.0, gt=0, description="A node whose batches stop for longer counts as silent."
    )
    report_hs06_per_hs23: float | None = Field(
        None,
        gt=0,
        description="HEPSPEC06 per HEPscore23; set to add hepspec to APEL v0.4 and records "
        "(in HEPSPEC06) to APEL v0.3.",
    )
    # APEL export (aggregator/report/apel.py, docs/report.md#apel-mapping)
    apel_site: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="The site's official GOCDB name, the `Site` of the APEL records; unset: "
        "the facility name, and the report warns that it should be set.",
    )
    # -- InfluxDB-v2-API time-series store (aggregator/store/tsdb.py, docs/scale.md) --
    tsdb_url: str | None = Field(
        None,
        description="InfluxDB v2 API URL of a time-series store for raw samples (InfluxDB 2/3, "
        "VictoriaMetrics); unset: raw samples stay in the database only.",
    )
    tsdb_org: str = Field("afmon", description="Its organisation.")
    tsdb_bucket: str = Field("afmon", description="Its bucket.")
    tsdb_token: SecretStr | None = Field(None, description="Its API token.")
    tsdb_flush_seconds: float = Field(
        1.0, gt=0, description="How often the outbox is drained into the store when idle."
    )
    tsdb_rows_per_write: int = Field(
        200, gt=0, description="Outbox rows (one per ingested batch) per write to the store."
    )
    tsdb_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one store write.")
    tsdb_raw_only: bool = Field(
        False,
        description="With AFMON_TSDB_URL: raw samples go only to the time-series store, not also "
        "into the database's `sample` table (faster ingest, a smaller database); the few series "
        "afmon reads back itself (XRootD server counters, GPU utilisation, agent spool depth) "
        "stay in the database too. See docs/scale.md.",
    )
    # -- mail (alerts and reports) --
    smtp_host: str | None = Field(None, description="SMTP server for mail; unset: no mail.")
    smtp_port: int = Field(25, description="SMTP port.")
    smtp_starttls: bool = Field(False, description="Use STARTTLS with the SMTP server.")
    smtp_user: str | None = Field(None, description="SMTP login user, if the server needs one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP login password.")
    mail_from: str = Field("afmon@localhost", description="From: of afmon's mail.")
    report_mail_to: list[str] = Field(
        default_factory=list, description='Recipients of report mail, as JSON: ["a@b.org"].'
    )

    @model_validator(mode="after")
    def _raw_only_needs_a_store(self) -> ServerSettings:
        if self.tsdb_raw_only and not self.tsdb_url:
            raise ValueError(
                "AFMON_TSDB_RAW_ONLY needs AFMON_TSDB_URL: without a store, raw samples are lost"
            )
        return self

    @model_validator(mode="after")
    def _late_window_within_retention(self) -> ServerSettings:
        if self.late_sample_window_seconds > self.retention_days * 86400:
            raise ValueError(
                f"AFMON_LATE_SAMPLE_WINDOW_SECONDS ({self.late_sample_window_seconds:g}) is "
                f"longer than AFMON_RETENTION_DAYS ({self.retention_days:g} days): a late "
                "sample needs its neighbours, which are pruned after the retention"
            )
        return self

    @model_validator(mode="after")
    def _peers_are_not_own_facilities(self) -> ServerSettings:
        clash = sorted(set(self.federation_peers) & set(self.facility_tokens))
        if clash:
            raise ValueError(
                f"AFMON_FEDERATION_PEERS names {', '.join(clash)}, a facility of this server "
                "(AFMON_FACILITY_TOKENS): a published ledger would replace its own"
            )
        return self

    @model_validator(mode="after")
    def _basic_auth_is_a_pair(self) -> ServerSettings:
        if bool(self.metrics_username) != bool(self.metrics_password):
            raise ValueError(
                "AFMON_METRICS_USERNAME and AFMON_METRICS_PASSWORD go together: set both or neither"
            )
        return self

    def group_commit_batches(self, dialect: str) -> int:
        """AFMON_INGEST_GROUP_COMMIT, or its default for the database."""
        if self.ingest_group_commit is not None:
            return self.ingest_group_commit
        return 32 if dialect == "sqlite" else 1

    @property
    def sign_in_issuers(self) -> list[str]:
        """The trusted issuers the dashboard can sign in with: each needs a client, its own
        (`client_id`) or the global AFMON_OIDC_CLIENT_ID."""
        return [u for u, c in self.oidc_issuers.items() if c.client_id or self.oidc_client_id]

    @model_validator(mode="after")
    def _issuers_of_the_identity_map(self) -> ServerSettings:
        """Trust the issuers the identity map names, so that an issuer is written once."""
        if self.identity_file is None:
            return self
        mapped = identity_map_issuers(self.identity_file)
        merged = dict(mapped)
        for url, config in self.oidc_issuers.items():
            base = mapped.get(url)
            if base is None:
                merged[url] = config
                continue
            if base.vo != config.vo:
                raise ValueError(
                    f"issuer {url!r} is VO {config.vo!r} in AFMON_OIDC_ISSUERS but VO "
                    f"{base.vo!r} in the identity map {self.identity_file} ([vos.{base.vo}]): "
                    "one issuer serves one VO; name it in one place"
                )
            update = {name: getattr(config, name) for name in config.model_fields_set}
            merged[url] = base.model_copy(update=update)
        self.oidc_issuers = merged
        return self

    @field_validator("admin_groups")
    @classmethod
    def _no_issuerless_admin_groups(cls, groups: list[str]) -> list[str]:
        if groups:
            example = json.dumps({"https://iam.example/": {"vo": "atlas", "admin_groups": groups}})
            raise ValueError(
                "AFMON_ADMIN_GROUPS is no longer accepted: a group name alone would let any "
                "trusted issuer (another VO's) grant facility admin. Move the groups to the "
                f"issuer that asserts them, e.g. AFMON_OIDC_ISSUERS='{example}'"
            )
        return groups

    @field_validator("retention_days", "max_future_skew_seconds", "gauge_max_gap_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value
