"""dask-gateway probe: the gateway's clusters, read from its REST API, as `dask_cluster` events.

Each poll lists `GET {gateway}/api/v1/clusters/?status=PENDING,RUNNING,STOPPING,STOPPED,FAILED`
(without `status` the gateway lists only active clusters, and a cluster that stopped between two
polls would be missed) and, for a cluster it was following that is no longer listed,
`GET {gateway}/api/v1/clusters/{name}` (a 404 means the gateway forgot it: a restart with an
in-memory database, or its clean-up of old clusters).

The gateway's cluster model has `name`, `status`, `start_time` and `stop_time` in
**milliseconds** since the epoch, and `options`; it names no user. Its REST API lists only the
clusters of the user a request authenticates as (there is no admin listing), so the owner of a
cluster is the account the probe asked as: one account per listed user (`users`), with

    jupyterhub  `Authorization: jupyterhub <token>`  (JupyterHubAuthenticator; one user)
    token       `Authorization: token <token>`       (an authenticator that takes it; one user)
    bearer      `Authorization: Bearer <token>`      (one user)
    basic       `Authorization: Basic user:<token>`  (SimpleAuthenticator: the token is its
                                                      shared password; any number of users)

Events: one `dask_cluster` per cluster, id `<gateway host:port[/path]>/<name>`, start = the
request (`start_time`), end = `stop_time` once STOPPED or FAILED; attrs status, profile, options,
gateway, cluster and, once ended, outcome (ok / failed / gone). A cluster's event is emitted
again at each status change it is seen in (the server keeps the first open one and the end), and
never after it ended. A cluster the gateway forgot while open ends when it was seen gone.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput

log = logging.getLogger(__name__)

Auth = Literal["jupyterhub", "token", "bearer", "basic"]
AUTH_SCHEMES: tuple[str, ...] = ("jupyterhub", "token", "bearer", "basic")
STATUSES = ("PENDING", "RUNNING", "STOPPING", "STOPPED", "FAILED")
FINAL = {"STOPPED": "ok", "FAILED": "failed"}
GONE = "GONE"
_SCHEME_WORD = {"jupyterhub": "jupyterhub", "token": "token", "bearer": "Bearer"}


def epoch_of_ms(value: Any, what: str) -> float | None:
    """Epoch seconds from the gateway's integer milliseconds (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{what} must be milliseconds since the epoch, not {value!r}")
    return value / 1000.0


def profile_of(options: dict[str, Any]) -> str:
    for key in ("profile", "profile_name", "profile_slug"):
        value = options.get(key)
        if isinstance(value, str) and value:
            return value[:64]
    return "default"


@dataclass
class _Cluster:
    user: str
    name: str
    start: float
    options: dict[str, Any]
    emitted: str = ""  # the last status an event was emitted for
    ended: bool = False


class DaskGatewayProbe:
    name = "dask_gateway"

    def __init__(
        self,
        gateway_url: str,
        token: str | None,
        *,
        auth: Auth = "jupyterhub",
        users: Sequence[str] = (),
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 30.0,
    ) -> None:
        """`users`: whose clusters to list (see the module doc); `poll_seconds`: the least time
        between two polls (each collection polls when that much has passed; 0: every one)."""
        self.gateway_url = gateway_url.rstrip("/")
        parts = urlsplit(self.gateway_url)
        self.namespace = (parts.netloc + parts.path) or self.gateway_url
        self._client = client or httpx.Client(timeout=10.0)
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._last_poll = -float("inf")
        self._clusters: dict[str, _Cluster] = {}
        self._accounts: list[tuple[str, dict[str, str]]] = []
        self.state = self._configure(token, auth, list(users))

    def _configure(self, token: str | None, auth: str, users: list[str]) -> str:
        if auth not in AUTH_SCHEMES:
            return f"unknown auth {auth!r} (AFMON_DASK_GATEWAY_AUTH: {', '.join(AUTH_SCHEMES)})"
        if not token:
            return "no credential (set AFMON_DASK_GATEWAY_TOKEN)"
        if not users or not all(users):
            return (
                "no user (set AFMON_DASK_GATEWAY_USERS: the gateway lists only the clusters "
                "of the user it authenticates, and names no user in them)"
            )
        if auth != "basic" and len(users) != 1:
            return (
                f"{auth} auth authenticates one user, not {len(users)} (AFMON_DASK_GATEWAY_USERS)"
            )
        for user in users:
            if auth == "basic":
                basic = base64.b64encode(f"{user}:{token}".encode()).decode()
                header = f"Basic {basic}"
            else:
                header = f"{_SCHEME_WORD[auth]} {token}"
            self._accounts.append((user, {"Authorization": header}))
        return READY

    # -- the probe interface --------------------------------------------------------------

    def collect(self, now: float) -> ProbeOutput:
        if now - self._last_poll < self._poll_seconds:
            return ProbeOutput()
        self._last_poll = now
        return ProbeOutput(events=self.poll())

    def poll(self) -> list[wire.Event]:
        """One poll of every account. A gateway error ends that account's poll (logged) and
        keeps the events found before it; what it missed is found at the next poll."""
        events: list[wire.Event] = []
        for user, headers in self._accounts:
            try:
                self._poll_account(user, headers, events)
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("dask-gateway %s, user %s: %s", self.gateway_url, user, exc)
        return events

    # -- one account ----------------------------------------------------------------------

    def _poll_account(self, user: str, headers: dict[str, str], events: list[wire.Event]) -> None:
        # the gateway answers an authenticated request with a session cookie that it then
        # prefers to the Authorization header: another account's cookie would make this
        # account's listing that account's
        self._client.cookies.clear()
        r = self._client.get(
            f"{self.gateway_url}/api/v1/clusters/",
            params={"status": ",".join(STATUSES)},
            headers=headers,
        )
        r.raise_for_status()
        listing = r.json()
        if not isinstance(listing, dict):
            raise ValueError(f"the cluster list is a {type(listing).__name__}, not an object")
        now = self._clock()
        for model in listing.values():
            self._see(user, model, now, events)
        for name, c in list(self._clusters.items()):
            if c.user != user or name in listing:
                continue
            if c.ended:  # no longer listed after it ended: it will not come back
                del self._clusters[name]
                continue
            self._client.cookies.clear()
            r = self._client.get(f"{self.gateway_url}/api/v1/clusters/{name}", headers=headers)
            if r.status_code == 404:
                events.append(self._event(c, GONE, now))
                del self._clusters[name]
                continue
            r.raise_for_status()
            self._see(user, r.json(), self._clock(), events)

    def _see(self, user: str, model: Any, now: float, events: list[wire.Event]) -> None:
        """The event for a cluster model when its status is new to the probe; a model that
        is not what the gateway documents is logged and skipped."""
        try:
            event = self._event_of(user, model, now)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                # not the model itself: a running cluster's holds its TLS key
                "dask-gateway %s: skipping cluster %r: %s",
                self.gateway_url,
                model.get("name") if isinstance(model, dict) else None,
                exc,
            )
            return
        if event is not None:
            events.append(event)

    def _event_of(self, user: str, model: dict[str, Any], now: float) -> wire.Event | None:
        name, status = str(model["name"]), str(model["status"])
        if status not in STATUSES:
            raise ValueError(f"cluster {name}: unknown status {status!r}")
        start = epoch_of_ms(model.get("start_time"), f"cluster {name}: start_time")
        if start is None:
            raise ValueError(f"cluster {name}: no start_time")
        c = self._clusters.get(name)
        if c is None:
            options = model.get("options")
            c = self._clusters[name] = _Cluster(
                user, name, start, options=options if isinstance(options, dict) else {}
            )
        if c.ended or c.emitted == status:
            return None
        end = None
        if status in FINAL:
            end = epoch_of_ms(model.get("stop_time"), f"cluster {name}: stop_time") or now
        return self._event(c, status, end)

    def _event(self, c: _Cluster, status: str, end: float | None) -> wire.Event:
        c.emitted = status
        attrs: dict[str, str | int | float | bool] = {
            "status": status,
            "profile": profile_of(c.options),
            "options": json.dumps(c.options, sort_keys=True, default=str)[:200],
            "gateway": self.namespace[:256],
            "cluster": c.name[:256],
        }
        if end is not None:
            c.ended = True
            attrs["outcome"] = FINAL.get(status, "gone")
            end = max(end, c.start)
        event_id = f"{self.namespace}/{c.name}"[:256]
        return wire.Event("dask_cluster", event_id, c.user, c.start, end, attrs)
