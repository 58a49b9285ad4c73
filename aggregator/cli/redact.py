"""Settings as an operator may see them in a message or a log line: secrets masked.

A refusal names the value it refuses, so that the operator sees what the server read; the
value may hold a credential (a password in a URL, a token), and logs and terminals are not
the place for those.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

MASK = "***"
_MAX_SHOWN = 160
_SECRET_NAME = re.compile(r"token|password|secret", re.IGNORECASE)
_SECRET_QUERY = re.compile(
    r"([?&](?:password|passwd|pwd|token|secret|api_key|apikey|access_token)=)[^&#]*",
    re.IGNORECASE,
)
_JSON_STRING_VALUE = re.compile(r'(:\s*)"(?:[^"\\]|\\.)*("|$)')


def mask_url(text: str) -> str:
    """`text` with the password of a URL (`scheme://user:PASSWORD@host`) and password-like
    query parameters replaced by ***; text that is no URL comes back unchanged. When in
    doubt (an `@` later in the URL), more is masked rather than less."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        user = rest[:at].split(":", 1)[0]
        rest = f"{user}:{MASK}{rest[at:]}"
    return _SECRET_QUERY.sub(rf"\1{MASK}", f"{scheme}{sep}{rest}")


def is_secret(name: str, annotation: Any = None) -> bool:
    """Whether a setting holds a credential: a SecretStr, or a name that says so
    (AFMON_FACILITY_TOKENS holds one token per facility)."""
    return "SecretStr" in repr(annotation) or bool(_SECRET_NAME.search(name))


def shown(value: object, *, secret: bool = False) -> str:
    """A value as the shell would take it back (quoted where needed), secrets masked. A
    secret JSON text keeps its shape with its strings after `:` masked, so that a syntax
    error can still be found in it."""
    if isinstance(value, str):
        text = value
    elif value is None:
        return "(unset)"
    else:
        import json

        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = str(value)
    if secret:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            text = _JSON_STRING_VALUE.sub(rf'\1"{MASK}\2', text)
        else:
            return MASK
    else:
        text = mask_url(text)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return shlex.quote(text)
