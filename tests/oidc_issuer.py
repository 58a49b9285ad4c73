"""A local WLCG/OIDC token issuer for tests, over real HTTP.

It serves its OpenID configuration and JWKS, signs tokens with its own RSA key,
and runs the authorization-code flow with PKCE: `/authorize` approves the user named
by `login_hint` at once (no login form) and `/token` exchanges the code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class Issuer:
    """One issuer (one VO) at `{base}/{path}`; `users` maps a login name to its groups."""

    def __init__(self, path: str, audience: str, users: dict[str, list[str]] | None = None,
                 client_id: str = "afmon", client_secret: str = "client-secret") -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = f"key-{path}"
        self.path = path
        self.audience = audience
        self.users = users or {}
        self.client_id = client_id
        self.client_secret = client_secret
        self.base = ""
        self.codes: dict[str, dict[str, str]] = {}

    @property
    def url(self) -> str:
        return f"{self.base}/{self.path}"

    def jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(self, sub: str, groups: list[str], key: Any = None, **over: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url, "sub": sub, "aud": self.audience, "iat": now - 10,
            "exp": now + 3600, "jti": secrets.token_hex(8), "wlcg.ver": "1.0",
            "wlcg.groups": groups, "preferred_username": sub,
        }
        claims.update(over)
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": self.kid})

    # -- the endpoints ------------------------------------------------------------------

    def handle_get(self, rest: str, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if rest == ".well-known/openid-configuration":
            return _json({"issuer": self.url, "jwks_uri": f"{self.url}/jwks",
                          "authorization_endpoint": f"{self.url}/authorize",
                          "token_endpoint": f"{self.url}/token"})
        if rest == "jwks":
            return _json({"keys": [self.jwk()]})
        if rest == "authorize":
            user = query.get("login_hint", "")
            if user not in self.users or query.get("client_id") != self.client_id:
                target = f"{query['redirect_uri']}?{urlencode({'error': 'access_denied'})}"
                return 302, {"Location": target}, b""
            code = secrets.token_urlsafe(16)
            self.codes[code] = {k: query[k] for k in ("redirect_uri", "code_challenge", "nonce")}
            self.codes[code]["user"] = user
            target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            return 302, {"Location": target}, b""
        return 404, {}, b""

    def handle_post(self, rest: str, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if rest != "token":
            return 404, {}, b""
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or form.get("client_secret") != self.client_secret:
            return _json({"error": "invalid_grant"}, 400)
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant["code_challenge"]:
            return _json({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return _json({"error": "invalid_grant"}, 400)
        user = grant["user"]
        return _json({
            "access_token": self.token(user, self.users[user]),
            "id_token": self.token(user, [], aud=self.client_id, nonce=grant["nonce"]),
            "token_type": "Bearer", "expires_in": 3600,
        })


def _json(body: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class IssuerServer:
    """Serves several issuers on 127.0.0.1:`port`, each under its own path."""

    def __init__(self, port: int, issuers: list[Issuer]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.issuers = {i.path: i for i in issuers}
        for i in issuers:
            i.base = self.base
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, result: tuple[int, dict[str, str], bytes]) -> None:
                status, headers, body = result
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self) -> tuple[Issuer | None, str, dict[str, str]]:
                url = urlparse(self.path)
                name, _, rest = url.path.strip("/").partition("/")
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                return outer.issuers.get(name), rest, query

            def do_GET(self) -> None:  # noqa: N802
                issuer, rest, query = self._route()
                self._reply(issuer.handle_get(rest, query) if issuer else (404, {}, b""))

            def do_POST(self) -> None:  # noqa: N802
                issuer, rest, _ = self._route()
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                self._reply(issuer.handle_post(rest, form) if issuer else (404, {}, b""))

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> IssuerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
