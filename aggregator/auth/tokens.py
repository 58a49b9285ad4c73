"""Readers' identity: WLCG-profile bearer tokens (OIDC JWTs) turned into a `Principal`.

The member is (`iss`, `sub`), the VO comes from the issuer (one issuer, one VO),
groups from `wlcg.groups` or from `eduperson_entitlement` URNs. Which groups make a
VO manager or a facility admin is configuration *of each issuer*: authority is the pair
(issuer, group), so a group asserted by another trusted issuer grants nothing. Signatures
are checked against the issuer's JWKS, fetched over HTTPS (or HTTP for tests) and cached;
`exp`, `aud` and `iss` are checked (`aud`: the service's audience, or the issuer's own
sign-in `client_id` when it has one; never another client), and the claims afmon reads must
have the WLCG profile's types; nothing from a token is trusted before that.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from afmon.aggregator.core.issuers import IssuerConfig
from afmon.aggregator.identity.accounts import member_id
from afmon.aggregator.query.reads import Principal

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


class AuthError(Exception):
    """A token that is not accepted; the message says why (never the token itself)."""


@dataclass
class _Keys:
    keys: dict[str, Any]
    fetched: float


class TokenVerifier:
    """Verifies bearer tokens and maps their claims to a Principal."""

    def __init__(
        self,
        issuers: dict[str, IssuerConfig],
        audience: str,
        admin_facility: str | None = None,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        jwks_ttl: float = 3600.0,
        leeway: float = 30.0,
    ) -> None:
        self._issuers = issuers
        self._audience = audience
        self._admin_facility = admin_facility
        self._client = client or httpx.Client(timeout=10)
        self._clock = clock
        self._ttl = jwks_ttl
        self._leeway = leeway
        self._keys: dict[str, _Keys] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._issuers)

    def issuer(self, issuer: str) -> IssuerConfig | None:
        """The configuration of a trusted issuer (None when not trusted)."""
        return self._issuers.get(issuer)

    def audiences(self, issuer: str) -> list[str]:
        """The `aud` values accepted from this issuer: the service's audience, and the
        issuer's own sign-in client when it has one (its access tokens may name that client).
        Only this issuer's client: a client id is an issuer's name, not afmon's."""
        own = self._issuers[issuer].client_id
        return [self._audience] + ([own] if own and own != self._audience else [])

    def principal(self, token: str) -> Principal:
        claims = self.verify(token)
        issuer = claims["iss"]
        config = self._issuers[issuer]
        groups = token_groups(claims)
        mid = member_id(issuer, claims["sub"])
        shown = claims.get("preferred_username")
        name = shown if isinstance(shown, str) and 0 < len(shown) <= MAX_SUB else claims["sub"]
        if groups & set(config.admin_groups):  # only this issuer's own admin groups
            return Principal(
                "facility_admin",
                member_id=mid,
                vo=config.vo,
                facility=config.admin_facility or self._admin_facility,
                name=name,
            )
        if groups & set(config.manager_groups):
            return Principal("vo_manager", member_id=mid, vo=config.vo, name=name)
        return Principal("member", member_id=mid, vo=config.vo, name=name)

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self._issuers:
            raise AuthError(f"issuer {issuer!r} is not trusted here")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed token: header 'kid' is not a string")
        key = self._key(issuer, kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audiences(issuer),
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            accepted = " or ".join(repr(a) for a in self.audiences(issuer))
            raise AuthError(f"token is not for this service (audience {accepted})") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"token refused: {exc}") from None
        check_claims(claims)
        return claims

    def _key(self, issuer: str, kid: str | None) -> Any:
        with self._lock:
            cached = self._keys.get(issuer)
            now = self._clock()
            stale = cached is None or now - cached.fetched > self._ttl
            if stale or (kid is not None and kid not in cached.keys):  # type: ignore[union-attr]
                # an unknown kid may be a rotated key: refetch, but at most once a minute
                if cached is None or now - cached.fetched > 60 or stale:
                    cached = self._keys[issuer] = _Keys(self._fetch(issuer), now)
        if kid is None and len(cached.keys) == 1:
            return next(iter(cached.keys.values()))
        if kid not in cached.keys:
            raise AuthError(f"no signing key {kid!r} at issuer {issuer!r}")
        return cached.keys[kid]

    def _fetch(self, issuer: str) -> dict[str, Any]:
        url = self._issuers[issuer].jwks_url
        try:
            if url is None:
                config = self._client.get(issuer.rstrip("/") + "/.well-known/openid-configuration")
                config.raise_for_status()
                url = config.json()["jwks_uri"]
            r = self._client.get(url)
            r.raise_for_status()
            keys = {}
            for jwk in r.json()["keys"]:
                keys[jwk.get("kid")] = jwt.PyJWK.from_json(json.dumps(jwk)).key
            return keys
        except (httpx.HTTPError, KeyError, ValueError, jwt.PyJWTError) as exc:
            raise AuthError(f"cannot fetch the signing keys of {issuer!r}: {exc}") from None


MAX_SUB = 255  # the WLCG token profile's limit on `sub`


def check_claims(claims: dict[str, Any]) -> None:
    """The claims afmon reads have the WLCG profile's types, else AuthError naming the claim.

    A malformed claim is the issuer's error or a forgery; refusing it (401) is safer than
    guessing, and it must never reach code that assumes the type (a 500)."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise AuthError("claim 'sub' must be a non-empty string")
    if len(sub) > MAX_SUB:
        raise AuthError(f"claim 'sub' is longer than {MAX_SUB} characters")
    for name in ("wlcg.groups", "eduperson_entitlement"):
        value = claims.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AuthError(f"claim {name!r} must be a list of strings")


def token_groups(claims: dict[str, Any]) -> set[str]:
    """Groups from `wlcg.groups`, or from INDIGO IAM's `eduperson_entitlement` URNs
    (claims already checked by `check_claims`)."""
    groups = set(claims.get("wlcg.groups", []))
    for urn in claims.get("eduperson_entitlement", []):
        if ":group:" in urn:
            name = urn.split(":group:", 1)[1].split("#", 1)[0]
            groups.add("/" + name.replace(":", "/").strip("/"))
    return groups
