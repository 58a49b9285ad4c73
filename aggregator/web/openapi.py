"""The OpenAPI document's shared pieces: the request bodies that routes read themselves (the
agent's wire batch, InfluxDB line protocol, OTLP), the error shapes they answer with, who may
call what (security schemes), and the 405 of an API path asked with a method it lacks.

`install(app)` adds the components to the app's document; routes name them through the
helpers here (`error`, `AGENT_BATCH_BODY`, ...). The batch's schema is generated from the
msgspec structs of `afmon.collectors.wire`, so the document and the decoder cannot drift.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.requests import Request

from afmon.aggregator.federation.messages import FED_CONTENT_TYPE, Publication
from afmon.collectors import wire

_REF = "#/components/schemas/{name}"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})

# -- error shapes ---------------------------------------------------------------------------

ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "title": "Error",
        "description": "A refusal of the read API, the sign-in flow and /metrics.",
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    "IngestError": {
        "title": "IngestError",
        "description": "A refused agent batch: `field` is a JSON path into the batch "
        "(`$` for the whole body, `authorization` for the credential).",
        "type": "object",
        "properties": {
            "detail": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                "required": ["field", "message"],
            }
        },
        "required": ["detail"],
    },
    "FederationError": {
        "title": "FederationError",
        "description": "A refused publication of a facility afmon (docs/federation.md).",
        "type": "object",
        "properties": {
            "detail": {
                "type": "object",
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                "required": ["code", "message"],
            }
        },
        "required": ["detail"],
    },
    "WriteError": {
        "title": "WriteError",
        "description": "A refused line-protocol write, shaped like InfluxDB's; `line` is the "
        "1-based line at fault when one is, `refused_lines` how many lines were refused when "
        "no line was good (each is quarantined).",
        "type": "object",
        "properties": {
            "code": {"type": "string"},
            "message": {"type": "string"},
            "line": {"type": "integer"},
            "refused_lines": {"type": "integer"},
        },
        "required": ["code", "message"],
    },
    "OtlpStatus": {
        "title": "OtlpStatus",
        "description": "A refused OTLP export: a google.rpc.Status (JSON form; the protobuf "
        "form when the request was protobuf).",
        "type": "object",
        "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        "required": ["code", "message"],
    },
    "IngestResult": {
        "title": "IngestResult",
        "type": "object",
        "properties": {
            "status": {"enum": ["applied", "partial", "duplicate"]},
            "facility": {"type": "string", "description": "The credential's facility"},
            "stamped_facility": {
                "type": "string",
                "description": "The batch's own facility field, when it was another (the "
                "batch was re-stamped with the credential's)",
            },
            "seq": {"type": "integer"},
            "samples": {"type": "integer", "minimum": 0},
            "stale_samples": {"type": "integer", "minimum": 0},
            "events": {"type": "integer", "minimum": 0},
            "refused": {
                "description": "Records refused and quarantined (status partial; the first "
                "100): docs/accounting.md",
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                    },
                    "required": ["field", "reason", "message"],
                },
            },
        },
        "required": ["status", "facility", "seq", "samples", "stale_samples", "events"],
    },
}

_CHALLENGE = {"WWW-Authenticate": {"schema": {"type": "string"}}}
_RETRY = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def error(description: str, schema: str = "Error", headers: dict[str, Any] | None = None) -> dict:
    """One JSON error answer of the document."""
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(name=schema)}}},
    }
    if headers:
        out["headers"] = headers
    return out


def reader_errors() -> dict[int | str, dict[str, Any]]:
    """The refusals of every read route (`reader_principal`)."""
    return {401: error("No session and no bearer token, or a token refused", headers=_CHALLENGE)}


# -- ingest: the agent's batch --------------------------------------------------------------

EXAMPLE_FACILITY = "my-af"
EXAMPLE_BATCH = wire.Batch(
    version=wire.WIRE_VERSION,
    agent_id="node-1.my-af",
    facility=EXAMPLE_FACILITY,
    node="node-1",
    seq=1,
    sent_at=1767225660.0,
    series=[
        wire.Series(
            metric="user_cpu_seconds",
            unit="seconds",
            kind="counter",
            labels={"user": "alice", "node": "node-1"},
            times=[1767225600.0, 1767225630.0],
            values=[120.0, 135.5],
            created=1767225000.0,
        )
    ],
    events=[wire.Event(kind="session", id="s-1", user="alice", start=1767225000.0)],
)


def _batch_components() -> tuple[dict[str, Any], dict[str, Any]]:
    (batch,), components = msgspec.json.schema_components((wire.Batch,), ref_template=_REF)
    # Records are judged one by one (wire.decode_records): one that is not a Series or Event
    # is refused on its own in the answer (`malformed`), not the batch; the schema says so.
    for field, name in (("series", "Series"), ("events", "Event")):
        prop = components["Batch"]["properties"][field]
        prop["items"] = {"anyOf": [{"$ref": _REF.format(name=name)}, {}]}
        prop["description"] = (
            f"{name} records; one that does not match {name} is refused on its own "
            "(reason `malformed`, listed in the answer's `refused`), the rest applied"
        )
    return batch, components


def _ingest_body() -> dict[str, Any]:
    batch, _ = _batch_components()
    example = msgspec.to_builtins(EXAMPLE_BATCH)
    media = {"schema": batch, "example": example}
    return {
        "requestBody": {
            "required": True,
            "description": "One batch in wire format v1 (`afmon.collectors.wire`): JSON, "
            "optionally gzip-compressed (recognised by its magic bytes, with or without "
            "`Content-Encoding: gzip`). The data is stored as the credential's facility, "
            "whatever the batch's `facility` field says.",
            "content": {"application/json": media, wire.CONTENT_TYPE: media},
        }
    }


INGEST_EXTRA = {**_ingest_body(), "security": [{"agent": []}]}

INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Applied (partial: less the refused records, named), or a duplicate "
        "(agent_id, seq) acknowledged",
        "content": {"application/json": {"schema": {"$ref": _REF.format(name="IngestResult")}}},
    },
    401: error("Missing, unknown or revoked agent token", "IngestError"),
    413: error("Body too large (compressed or once decompressed)", "IngestError"),
    422: error("Not a valid batch (the field named), or over a cardinality limit", "IngestError"),
    429: error("Over the agent's batch rate", "IngestError", _RETRY),
    503: error("The database cannot store data now; retry", "IngestError", _RETRY),
}

# -- Telegraf (InfluxDB v2 line protocol) and OTLP/HTTP --------------------------------------

_WRITE_HEADERS = {
    "X-Afmon-Status": {
        "description": "applied, partial (records refused), duplicate, or empty (nothing "
        "afmon maps)",
        "schema": {"enum": ["applied", "partial", "duplicate", "empty"]},
    },
    "X-Afmon-Refused": {
        "description": "Records refused (quarantined), bad lines included",
        "schema": {"type": "integer"},
    },
    "X-Afmon-Refused-Reason": {
        "description": "The first refused record's reason and field (`malformed: line 3` for "
        "a bad line)",
        "schema": {"type": "string"},
    },
    "X-Afmon-Refused-Lines": {
        "description": "Lines refused on their own (reason `malformed`, quarantined); the "
        "other lines were applied",
        "schema": {"type": "integer"},
    },
    "X-Afmon-Samples": {"schema": {"type": "integer"}},
    "X-Afmon-Ignored-Fields": {"schema": {"type": "integer"}},
}

WRITE_EXTRA = {
    "requestBody": {
        "required": False,
        "description": "InfluxDB line protocol, UTF-8, optionally gzip (`Content-Encoding`); "
        "an empty body writes nothing (204).",
        "content": {
            "text/plain": {
                "schema": {"type": "string"},
                "example": "cpu,host=node-1,cpu=cpu-total usage_user=12.5 1767225600000000000\n",
            }
        },
    },
    "security": [{"agent": []}, {"agentToken": []}],
}

WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {
        "description": "Written (or nothing afmon maps); a bad line is refused on its own "
        "(`X-Afmon-Refused-Lines`) and the other lines written",
        "headers": _WRITE_HEADERS,
    },
    400: error(
        "Bad gzip or not UTF-8, a bad precision, or no good line: every line refused "
        "(quarantined; `line` names the first, `refused_lines` counts them)",
        "WriteError",
    ),
    401: error("Missing, unknown or revoked agent token", "WriteError"),
    413: error("Body too large (compressed or once decompressed)", "WriteError"),
    415: error("A content-encoding other than gzip", "WriteError"),
    422: error("Over a cardinality limit", "WriteError"),
    429: error("Over the credential's request rate", "WriteError", _RETRY),
    503: error("The database cannot store data now; retry", "WriteError", _RETRY),
}

PRECISION_SCHEMA = {"enum": ["ns", "us", "ms", "s"]}

OTLP_EXTRA = {
    "requestBody": {
        "required": True,
        "description": "An OTLP ExportMetricsServiceRequest, protobuf or its JSON mapping "
        "(an object), optionally gzip (`Content-Encoding`); an empty protobuf body is an "
        "empty export.",
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}, "example": {"resourceMetrics": []}},
        },
    },
    "security": [{"agent": []}, {"agentToken": []}],
}


def _otlp(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": _REF.format(name="OtlpStatus")}},
        },
    }


OTLP_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Exported: an ExportMetricsServiceResponse, in the request's encoding; "
        "metrics or points afmon refused (quarantined) are counted in its partial_success",
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}},
        },
    },
    400: _otlp("Not an OTLP metrics request"),
    401: _otlp("Missing, unknown or revoked agent token"),
    413: _otlp("Body too large (compressed or once decompressed)"),
    415: _otlp("A content type other than protobuf or JSON, or an unknown content-encoding"),
    422: _otlp("Over a cardinality limit"),
    429: _otlp("Over the credential's request rate"),
    503: _otlp("The database cannot store data now; retry"),
}

# -- /api/v1/federation/ledger ---------------------------------------------------------------


def _federation_components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components((Publication,), ref_template=_REF)
    return components


def _federation_body() -> dict[str, Any]:
    schema = {"$ref": _REF.format(name="Publication")}
    return {
        "requestBody": {
            "required": True,
            "description": "Whole ledger hours of the credential's facility (docs/federation.md), "
            "JSON, optionally gzip; each hour replaces this server's rows of (facility, hour, "
            "the VOs published).",
            "content": {
                FED_CONTENT_TYPE: {"schema": schema},
                "application/json": {"schema": schema},
            },  # fmt: skip
        },
        "security": [{"federation": []}],
    }


FEDERATION_EXTRA = _federation_body()
_FED_ERROR = {"application/json": {"schema": {"$ref": _REF.format(name="FederationError")}}}
FEDERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored: the (hour, version) pairs this server now holds",
        "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {"hours": {"type": "array", "items": {
                "type": "array", "prefixItems": [{"type": "integer"}, {"type": "integer"}],
                "minItems": 2, "maxItems": 2}}},
            "required": ["hours"],
        }}},
    },  # fmt: skip
    400: {"description": "Not a publication, or one with rows that break a rule",
          "content": _FED_ERROR},
    401: {"description": "Missing or unknown federation credential", "content": _FED_ERROR},
    403: {"description": "A publication of another facility than the credential's",
          "content": _FED_ERROR},
    413: {"description": "Body too large (compressed or once decompressed)",
          "content": _FED_ERROR},
    415: {"description": "An unknown content-encoding", "content": _FED_ERROR},
}  # fmt: skip

# -- /metrics, /healthz ---------------------------------------------------------------------

METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The exposition; OpenMetrics when the scraper asks for it (`Accept`)",
        "content": {
            "text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}},
            "application/openmetrics-text; version=1.0.0; charset=utf-8": {
                "schema": {"type": "string"}
            },
        },
    },
    401: error("Protected and no (or a wrong) scrape credential", headers=_CHALLENGE),
}
METRICS_EXTRA = {"security": [{"scrapeBearer": []}, {"scrapeBasic": []}, {}]}

_READINESS = {
    "type": "object",
    "properties": {
        "status": {"enum": ["ready", "not ready"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["status", "checks"],
}
READYZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Data sent now would be stored",
        "content": {"application/json": {"schema": _READINESS}},
    },
    503: {
        "description": "Not ready: the failing check says why",
        "content": {"application/json": {"schema": _READINESS}},
    },
}

HEALTHZ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Up, and the database answers",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "ok"},
                        "version": {"type": "string"},
                        "database": {"type": "string"},
                    },
                    "required": ["status", "version", "database"],
                }
            }
        },
    },
    503: error("The database does not answer"),
}

READER_EXTRA = {"security": [{"reader": []}, {"session": []}]}

EPOCH_MAX = 253402300799.0  # 9999-12-31T23:59:59Z: the largest time a read route takes
_DIMENSION = "(facility|vo|group|member)"
BY_SCHEMA = {
    "pattern": f"^{_DIMENSION}(,{_DIMENSION})*$",
    "description": "Comma-separated columns to total by (refused with 400 otherwise)",
}


def _rows(description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A 200 answering a JSON array of row objects."""
    item = {"type": "object", "properties": properties, "required": required}
    schema = {"type": "array", "items": item}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


USAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _rows(
        "One row per (`by`..., resource): its columns, and the amount",
        {"resource": {"type": "string"}, "amount": {"type": "number"}, "unit": {"type": "string"}},
        ["resource", "amount", "unit"],
    ),
    400: error("A `by` that names no column"),
    **reader_errors(),
}

# /api/v1/batch (docs/batch.md): `by` names a dimension, optionally with the ledger's keys
_BATCH_DIMENSION = "(account|qos|partition)"
BATCH_BY_SCHEMA = {
    "pattern": f"^({_DIMENSION},)*{_BATCH_DIMENSION}(,({_BATCH_DIMENSION}|{_DIMENSION}))*$",
    "description": "Comma-separated columns to total by: one or more of account, qos, "
    "partition, optionally with facility, vo, group, member (refused with 400 otherwise)",
}
_SECONDS = {"type": "number", "minimum": 0}
AVAILABILITY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Per (facility, service[, day]): up, down, planned down and unknown "
        "seconds, availability (up over up + down) and unplanned availability (null without "
        "data); and each down interval with its planned part",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "services": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "facility": {"type": "string"},
                                    "service": {"type": "string"},
                                    "start": {"type": "number"},
                                    "end": {"type": "number"},
                                    "up_seconds": _SECONDS,
                                    "down_seconds": _SECONDS,
                                    "planned_down_seconds": _SECONDS,
                                    "unknown_seconds": {"type": "number"},
                                    "availability": {"type": ["number", "null"]},
                                    "unplanned_availability": {"type": ["number", "null"]},
                                },
                            },
                        },
                        "downtimes": {"type": "array", "items": {"type": "object"}},
                    },
                    "required": ["services", "downtimes"],
                }
            }
        },
    },  # fmt: skip
    **reader_errors(),
}
_COUNT = {"type": "integer", "minimum": 0}
GPU_BREADTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _rows(
        "One row per facility the caller sees with GPUs or GPU use (docs/gpu.md, Access "
        "breadth); null without a denominator",
        {
            "facility": {"type": "string"}, "gpus": _COUNT, "gpu_hours": _SECONDS,
            "members_served": _COUNT, "member_gpu_days": _COUNT,
            "members_per_gpu_day": {"type": ["number", "null"]},
            "members_several_gpus": _COUNT, "gpu_session_waits": _COUNT,
            "gpu_session_wait_p95_seconds": {"type": ["number", "null"]},
        },
        ["facility", "gpus", "gpu_hours", "members_served"],
    ),
    **reader_errors(),
}  # fmt: skip
PUBLIC_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The card: schema afmon-public-card/1 (docs/public-card-schema.json)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    404: error("The public card is off (AFMON_PUBLIC_CARD)"),
}
_RATIO = {"type": ["number", "null"], "minimum": 0}
FACILITIES_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _rows(
        "One row per facility the caller sees: active members, CPU hours, sessions, the p95 "
        "of time-to-session and time-to-first-worker (seconds) with the share of waits within "
        "their SLO, the shares of data read by source, batch CPU efficiency and GPU busy "
        "share (null without a denominator)",
        {
            "facility": {"type": "string"},
            "active_members": {"type": "integer"},
            "cpu_hours": {"type": "number"},
            "sessions": {"type": "number"},
            "time_to_session_p95_seconds": _RATIO,
            "time_to_session_within_slo_ratio": _RATIO,
            "time_to_first_worker_p95_seconds": _RATIO,
            "time_to_first_worker_within_slo_ratio": _RATIO,
            "data_read_local_share": _RATIO,
            "data_read_cache_share": _RATIO,
            "data_read_remote_share": _RATIO,
            "batch_cpu_efficiency": _RATIO,
            "gpu_busy_ratio": _RATIO,
        },
        ["facility", "active_members", "cpu_hours", "sessions"],
    ),
    **reader_errors(),
}
BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: _rows(
        'One row per `by` key: its columns ("" where jobs had none), the batch resources in '
        "base units, and cpu_efficiency (null without wall time)",
        {
            "batch_jobs": {"type": "number"},
            "batch_wall_core_seconds": {"type": "number"},
            "batch_cpu_seconds": {"type": "number"},
            "cpu_efficiency": {"type": ["number", "null"]},
        },
        ["batch_jobs", "batch_wall_core_seconds", "cpu_efficiency"],
    ),
    400: error("A `by` that names no batch dimension"),
    **reader_errors(),
}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "reader": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A WLCG/OIDC access token from a trusted issuer (AFMON_OIDC_ISSUERS).",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "afmon_session",
        "description": "The signed session that /auth/callback sets.",
    },
    "agent": {
        "type": "http",
        "scheme": "bearer",
        "description": "A facility's agent credential (AFMON_FACILITY_TOKENS or "
        "`afmon agent-token`).",
    },
    "agentToken": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "The agent credential as Telegraf sends it: `Token <credential>`.",
    },
    "federation": {
        "type": "http",
        "scheme": "bearer",
        "description": "A facility's federation credential (AFMON_FEDERATION_PEERS).",
    },
    "scrapeBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "AFMON_METRICS_TOKEN; none needed in local mode or with "
        "AFMON_METRICS_PUBLIC.",
    },
    "scrapeBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "AFMON_METRICS_USERNAME and AFMON_METRICS_PASSWORD.",
    },
}


def install(app: FastAPI) -> None:
    """Add the shared components (batch structs, error shapes, security schemes) to the
    app's document, and refuse the methods it does not name (`refuse_other_methods`).
    Call it after the API routes and before the mounts."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = doc.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            schemas.update(_batch_components()[1])
            schemas.update(_federation_components())
            schemas.update(ERROR_SCHEMAS)
            components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    refuse_other_methods(app, openapi())


def refuse_other_methods(app: FastAPI, document: dict[str, Any]) -> None:
    """Answer 405 (with `Allow`: the methods the document names) to a method that an API
    path lacks: without this the request falls through to what is mounted at `/` (the
    dashboard) and gets its HTML page."""
    for path, operations in document["paths"].items():
        methods = {m.upper() for m in operations if m.upper() in METHODS}
        allow = ", ".join(sorted(methods))

        async def refuse(_request: Request, allow: str = allow) -> JSONResponse:
            return JSONResponse(
                {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": allow}
            )

        app.router.add_route(
            path, refuse, methods=sorted(METHODS - methods), include_in_schema=False
        )
