"""Why settings could not be read, as one line per problem: the AFMON_ variable (or the flag
it came from), the value as read (secrets masked) and what the setting wants.

pydantic reports `loc`/`msg` pairs in field names; an operator knows the environment
variables, so every line is written in their terms.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from afmon.aggregator.cli.redact import is_secret, shown

_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([^"]+)"')


def env_name(field: str) -> str:
    return f"AFMON_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_value(field: str) -> str | None:
    """The variable's text as pydantic-settings reads it (names are not case-sensitive)."""
    wanted = env_name(field)
    for key, value in os.environ.items():
        if key.upper() == wanted:
            return value
    return None


def setting(cls: type[BaseModel], field: str, value: object, flags: Collection[str] = ()) -> str:
    """`AFMON_PORT=99999`, or `AFMON_PORT=99999 (from --port)` when a flag gave it."""
    info = cls.model_fields.get(field)
    secret = is_secret(field, info.annotation if info else None)
    text = f"{env_name(field)}={shown(value, secret=secret)}"
    return text + (f" (from {flag_name(field)})" if field in flags else "")


def validation_lines(
    cls: type[BaseModel],
    exc: ValidationError,
    overrides: dict[str, object],
) -> list[str]:
    """One line per problem pydantic found."""
    lines: list[str] = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = err["loc"]
        if not loc:  # a rule across settings: its message names them
            lines.append(f"bad settings: {msg}")
            continue
        field = str(loc[0])
        value = overrides[field] if field in overrides else env_value(field)
        if value is None:
            value = err.get("input")
        where = setting(cls, field, value, overrides)
        if len(loc) > 1:  # inside a JSON setting: name the place, show the part refused
            info = cls.model_fields.get(field)
            secret = is_secret(field, info.annotation if info else None)
            path = "".join(f"[{json.dumps(p)}]" for p in loc[1:])
            part = ""
            if err["type"] != "missing":
                part = f" = {shown(err.get('input'), secret=secret)}"
            where = f"{env_name(field)}{path}{part}"
        lines.append(f"bad setting {where}: {msg}")
    return lines


def json_example(cls: type[BaseModel], field: str) -> str:
    """An example of the setting's JSON: from its description ("as JSON: {...}"), else by
    its type."""
    info = cls.model_fields.get(field)
    description = (info.description or "") if info else ""
    start = description.find("as JSON: ")
    if start >= 0:
        text = description[start + len("as JSON: ") :]
        depth = 0
        for i, ch in enumerate(text):
            depth += ch in "{["
            depth -= ch in "}]"
            if depth == 0 and ch in "}]":
                return text[: i + 1]
            if depth == 0 and i == 0:
                break
    annotation = repr(info.annotation) if info else ""
    if annotation.startswith("list"):
        return '["a", "b"]'
    return '{"name": 1.0}' if "float" in annotation else '{"name": "value"}'


def settings_error_line(cls: type[BaseModel], exc: SettingsError) -> str:
    """A setting pydantic-settings could not even parse: a JSON one that is not JSON."""
    found = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
    if found is None:
        return f"bad setting: {exc}"
    field = found.group(1)
    value = env_value(field)
    cause = exc.__cause__
    why = ""
    if isinstance(cause, json.JSONDecodeError):
        why = f" ({cause.msg} at character {cause.pos + 1})"
    where = setting(cls, field, value if value is not None else "")
    return (
        f"bad setting {where}: not valid JSON{why}; it must be JSON like "
        f"{json_example(cls, field)} (in the shell, put it in single quotes)"
    )
