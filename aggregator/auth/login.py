"""Dashboard sign-in: the OIDC authorization-code flow (with PKCE) and a signed session.

`/auth/login` sends the browser to the issuer; `/auth/callback` checks the state,
exchanges the code for tokens, verifies the access token like any bearer token
(`afmon.aggregator.auth.tokens.TokenVerifier`), and keeps the resulting principal in a signed,
HttpOnly cookie that expires with the token. Dash callbacks and the read API both
accept that cookie. Each VO's IAM registers its own client, so the flow uses the issuer's
own `client_id`/`client_secret` when its configuration has them, else the global ones.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from afmon.aggregator.auth.tokens import AuthError, TokenVerifier
from afmon.aggregator.query.reads import Principal

SESSION_COOKIE = "afmon_session"
LOGIN_COOKIE = "afmon_login"
LOGIN_MAX_AGE = 600  # seconds a user may take at the issuer's login page

# The document's answers (the error shape is a component of `afmon.aggregator.web.openapi`);
# a browser (Accept: text/html) gets the same refusal as a page with a way back
_ERROR = {
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
        "text/html": {"schema": {"type": "string"}},
    }
}
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>afmon: sign-in refused</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 4rem auto;
color: #1f2933; }} .card {{ border: 1px solid #d9e2ec; border-left: 5px solid #D55E00;
padding: 1rem 1.5rem; border-radius: 4px; }} a {{ color: #0072B2; font-weight: 600; }}</style>
</head><body><div class="card" id="signin-refused"><h1>Sign-in refused</h1>
<p id="signin-reason">{detail}</p>
<p><a href="/" id="signin-back">Back to the dashboard</a> &middot;
<a href="/auth/login{again}" id="signin-again">Try again</a></p></div></body></html>
"""


def refused(request: Request, status: int, detail: str, issuer: str | None = None) -> Response:
    """A sign-in refusal: a page with a link back for a browser, else the API's JSON error."""
    if "text/html" not in request.headers.get("accept", ""):
        raise HTTPException(status, detail)
    again = f"?{urlencode({'issuer': issuer})}" if issuer else ""
    page = _PAGE.format(detail=html.escape(detail), again=html.escape(again))
    return HTMLResponse(page, status_code=status)


def _redirect(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"Location": {"schema": {"type": "string"}}},
    }


class Sessions:
    """Signs and reads the session cookie; `secret` comes from settings."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="afmon-session")
        self._login = URLSafeTimedSerializer(secret, salt="afmon-login")

    def dump(self, principal: Principal, expires: float) -> str:
        return self._serializer.dumps({"p": asdict(principal), "exp": expires})

    def load(self, cookie: str | None, now: float) -> Principal | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie)
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("exp", 0) <= now:
            return None
        return Principal(**data["p"])

    def dump_login(self, state: dict[str, str]) -> str:
        return self._login.dumps(state)

    def load_login(self, cookie: str | None) -> dict[str, str] | None:
        if not cookie:
            return None
        try:
            return self._login.loads(cookie, max_age=LOGIN_MAX_AGE)
        except BadSignature:
            return None


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_router(
    verifier: TokenVerifier,
    sessions: Sessions,
    client_id: str,
    client_secret: str,
    issuers: list[str],
    public_url: str | None,
    clock: Any,
    http: httpx.Client | None = None,
) -> APIRouter:
    router = APIRouter(prefix="/auth", tags=["sign-in"])
    client = http or httpx.Client(timeout=10)

    def redirect_uri(request: Request) -> str:
        base = public_url.rstrip("/") if public_url else str(request.base_url).rstrip("/")
        return f"{base}/auth/callback"

    def client_of(issuer: str) -> tuple[str, str]:
        """The issuer's own sign-in client, else the global one."""
        config = verifier.issuer(issuer)
        own_id = config.client_id if config else None
        own_secret = config.client_secret if config else None
        if own_id:
            return own_id, own_secret.get_secret_value() if own_secret else ""
        return client_id, client_secret

    def endpoints(issuer: str) -> dict[str, Any]:
        try:
            r = client.get(issuer.rstrip("/") + "/.well-known/openid-configuration")
            r.raise_for_status()
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise HTTPException(502, f"cannot reach the issuer {issuer}: {exc}") from None

    @router.get(
        "/login",
        summary="Start signing in at a trusted issuer (browser redirect)",
        status_code=302,
        response_class=RedirectResponse,
        responses={
            302: _redirect("To the issuer's authorization endpoint"),
            400: {"description": "No issuer, or not a trusted one", **_ERROR},
            502: {"description": "The issuer's OpenID configuration is unreachable", **_ERROR},
        },
    )
    def login(
        request: Request,
        issuer: str | None = Query(  # noqa: B008  (refused by the route: 400)
            None,
            description="One of the trusted issuers; absent or empty when there is only one",
            json_schema_extra={"enum": issuers + ([""] if len(issuers) == 1 else [])},
        ),
        login_hint: str | None = None,
    ) -> Response:
        issuer = issuer or (issuers[0] if len(issuers) == 1 else None)
        if issuer not in issuers:
            return refused(request, 400, f"pick an issuer: one of {', '.join(issuers)}")
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        code_verifier, challenge = _pkce()
        params = {
            "response_type": "code",
            "client_id": client_of(issuer)[0],
            "redirect_uri": redirect_uri(request),
            "scope": "openid profile wlcg.groups",
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if login_hint:
            params["login_hint"] = login_hint
        target = f"{endpoints(issuer)['authorization_endpoint']}?{urlencode(params)}"
        response = RedirectResponse(target, status_code=302)
        response.set_cookie(
            LOGIN_COOKIE,
            sessions.dump_login({"state": state, "issuer": issuer, "verifier": code_verifier}),
            max_age=LOGIN_MAX_AGE,
            httponly=True,
            samesite="lax",
            path="/auth",
        )
        return response

    @router.get(
        "/callback",
        summary="Where the issuer sends the browser back",
        status_code=302,
        response_class=RedirectResponse,
        responses={
            302: _redirect("Signed in: to the dashboard, with the session cookie"),
            400: {"description": "The sign-in state is missing, expired or wrong", **_ERROR},
            401: {"description": "The issuer refused the sign-in, or its token is", **_ERROR},
            502: {"description": "The issuer handed out no token", **_ERROR},
        },
    )
    def callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
        pending = sessions.load_login(request.cookies.get(LOGIN_COOKIE))
        issuer = pending["issuer"] if pending else None
        if error:
            return refused(request, 401, f"the issuer refused the sign-in: {error}", issuer)
        if pending is None or not secrets.compare_digest(pending["state"], state):
            detail = "sign-in state missing or wrong; start again at /auth/login"
            return refused(request, 400, detail)
        token_endpoint = endpoints(pending["issuer"])["token_endpoint"]
        own_id, own_secret = client_of(pending["issuer"])
        try:
            r = client.post(
                token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri(request),
                    "client_id": own_id,
                    "client_secret": own_secret,
                    "code_verifier": pending["verifier"],
                },
            )
            r.raise_for_status()
            access_token = r.json()["access_token"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            detail = f"the issuer did not hand out a token: {exc}"
            return refused(request, 502, detail, pending["issuer"])
        try:
            claims = verifier.verify(access_token)
            principal = verifier.principal(access_token)
        except AuthError as exc:
            return refused(request, 401, f"token refused: {exc}", pending["issuer"])
        response = RedirectResponse("/", status_code=302)
        expires = float(claims["exp"])
        response.set_cookie(
            SESSION_COOKIE,
            sessions.dump(principal, expires),
            max_age=max(1, int(expires - clock())),
            httponly=True,
            samesite="lax",
            path="/",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/auth")
        return response

    @router.get(
        "/logout",
        summary="Sign out (drops the session cookie)",
        status_code=302,
        response_class=RedirectResponse,
        responses={302: _redirect("To the dashboard, the session cookie dropped")},
    )
    def logout() -> RedirectResponse:
        response = RedirectResponse("/", status_code=302)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router
