"""The InfluxDB line protocol tokenizer, as the reference defines it.

https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/ and the grammar of
github.com/influxdata/line-protocol (`line-protocol.ebnf`): `split_lines` cuts a body into
points, `parse` reads one. Kept apart from the mapping (`lineprotocol`) so that what is line
protocol is decided in one place, by the reference's rules only:

- a line ends at `\\n` (a `\\r` before it is dropped) outside a quoted field string value,
  never at U+2028, U+0085 or another line break `str.splitlines` knows; a string field value
  may hold raw newlines (Telegraf leaves them unescaped);
- quotes are literal in the measurement, tag keys, tag values and field keys: only a field
  value that starts with `"` is quoted;
- escapes: the measurement escapes comma and space; tag keys, tag values and field keys
  escape comma, equals sign and space; a string field value escapes `"` and `\\`. A
  backslash before any other character is a literal backslash;
- a field value is a string, a boolean (`t T true True TRUE f F false False FALSE`), a float
  (`-1.5`, `.5`, `1.`, `6e-3`: no `+`, `_`, `inf` or `nan`), an integer `1i` (int64) or an
  unsigned integer `1u` (0 to 2^64 - 1); the timestamp is optional, an integer;
- names (measurement, tag keys, field keys) starting with `_` are reserved, and a string
  field value holds at most 64 KiB.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_INT64 = 2**63 - 1
MAX_UINT64 = 2**64 - 1
MAX_STRING = 65_536  # bytes of a string field value
MAX_STAMP = 2**63 - 2  # the reference's range: -9223372036854775806 to 9223372036854775806
TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
FALSE = frozenset(("f", "F", "false", "False", "FALSE"))

FieldValue = float | int | str | bool

# One token each; an escape pair is tried before a plain character, so in `\\,` the first
# backslash is literal and the comma escaped (as the reference's decoder reads it).
_MEASUREMENT = re.compile(r"(?:\\[, ]|[^, \n])+")
_KEY = re.compile(r"(?:\\[,= ]|[^,= \n])+")  # tag key, tag value, field key
_STRING = re.compile(r'"((?:\\.|[^"\\])*)"', re.S)
_PLAIN = re.compile(r"[^, \r\n]+")  # an unquoted field value
_SPACES = re.compile(r" *")
_MEASUREMENT_ESCAPE = re.compile(r"\\([, ])")
_KEY_ESCAPE = re.compile(r"\\([,= ])")
_STRING_ESCAPE = re.compile(r'\\(["\\])')
_INT = re.compile(r"-?[0-9]+")
_UINT = re.compile(r"[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DIGITS_MAX = 20  # past this, out of every range (and int() of 4,300 digits raises)

# The extent of a point that holds a quote: the same sections as `parse`, without judging
# them, so that a newline inside a field string value does not end the line.
_HEAD = re.compile(r"(?:\\ |[^ \n])*")  # measurement and tags: up to an unescaped space
_FIELD_KEY = re.compile(r"(?:\\[ ,=]|[^ ,=\n])*")
_OPEN_STRING = re.compile(r'"(?:\\.|[^"\\])*"?', re.S)  # unterminated: to the body's end
_VALUE_REST = re.compile(r"[^, \n]*")
_LINE_REST = re.compile(r"[^\n]*")


@dataclass(frozen=True)
class Parsed:
    """One point as written: the timestamp in the body's precision, None when absent."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    stamp: int | None


def split_lines(body: str) -> Iterator[tuple[int, str]]:
    """The points of a body: (number of the line the point starts on, its text without
    leading spaces and without the line break). Blank lines and `#` comments are left out."""
    n = len(body)
    i = 0
    number = 1
    while i < n:
        start = _SPACES.match(body, i).end()
        eol = body.find("\n", start)
        eol = n if eol < 0 else eol
        end = eol
        if start < eol and body[start] != "#" and body[start:eol] != "\r":
            if body.find('"', start, eol) >= 0:  # may open a string that spans lines
                end = _point_end(body, start)
            text = body[start:end]
            yield number, text[:-1] if text.endswith("\r") else text
        number += 1 + body.count("\n", start, end)
        i = end + 1


def _point_end(body: str, i: int) -> int:
    """Where the point starting at `i` ends: its `\\n` outside a string, or the body's end."""
    n = len(body)
    i = _HEAD.match(body, i).end()
    i = _SPACES.match(body, i).end()
    while True:
        i = _FIELD_KEY.match(body, i).end()
        if i < n and body[i] == "=":
            i += 1
            if i < n and body[i] == '"':
                i = _OPEN_STRING.match(body, i).end()
            i = _VALUE_REST.match(body, i).end()
        if i < n and body[i] == ",":
            i += 1
            continue
        return _LINE_REST.match(body, i).end()


# The common line, without a quote or backslash (what Telegraf sends for metrics): read by
# one match. Anything else, and every refusal with its reason, is `_parse`'s.
_NAME = r'[^,= \n\\"]+'
_SIMPLE = re.compile(
    rf' *([^,# \n\\"][^, \n\\"]*)((?:,{_NAME}={_NAME})*) +'
    rf'({_NAME}=[^,= \r\n\\"]+(?:,{_NAME}=[^,= \r\n\\"]+)*)(?: +(-?[0-9]+))? *'
)


def parse(line: str) -> Parsed:
    """Read one point (a line of `split_lines`); raises ValueError saying what is wrong."""
    m = _SIMPLE.fullmatch(line)
    point = None
    if m is not None:
        try:
            point = _parse_simple(m)
        except ValueError:
            pass  # `_parse` says why
    if point is None:
        point = _parse(line)
    _check_limits(point)
    return point


def _check_limits(point: Parsed) -> None:
    """InfluxDB's naming and length rules: names starting with `_` are reserved for the
    database (`_measurement`, `_field`, `_time`, ...), a string field value holds at most
    64 KiB."""
    if point.measurement.startswith("_"):
        raise ValueError(f"measurement {_show(point.measurement)}: names starting with '_' are "
                         "reserved")  # fmt: skip
    for what, keys in (("tag", point.tags), ("field", point.fields)):
        for key in keys:
            if key.startswith("_"):
                raise ValueError(f"{what} key {_show(key)}: names starting with '_' are reserved")
    for key, value in point.fields.items():
        if (
            isinstance(value, str)
            and len(value) > MAX_STRING // 4
            and (len(value.encode()) > MAX_STRING)
        ):
            raise ValueError(
                f"field {_show(key)}: string value of {len(value.encode())} bytes is longer "
                f"than {MAX_STRING} (64 KiB)"
            )


def _parse_simple(m: re.Match[str]) -> Parsed:
    measurement, tag_text, field_text, raw_stamp = m.groups()
    tags = dict(t.split("=", 1) for t in tag_text[1:].split(",")) if tag_text else {}
    if tags and len(tags) != tag_text.count(","):
        raise ValueError("duplicate tag")
    fields: dict[str, FieldValue] = {}
    for item in field_text.split(","):
        key, _, raw = item.partition("=")
        fields[key] = scalar(raw)
    stamp = None
    if raw_stamp is not None:
        stamp = int(raw_stamp) if len(raw_stamp) <= _DIGITS_MAX else MAX_UINT64
        if abs(stamp) > MAX_STAMP:
            raise ValueError("timestamp out of range")
    return Parsed(measurement, tags, fields, stamp)


def _parse(line: str) -> Parsed:
    """Read any line, escapes and quoted strings included, saying why one is refused."""
    n = len(line)
    i = _SPACES.match(line).end()
    if i < n and line[i] == "#":
        raise ValueError("a line starting with '#' is a comment")
    m = _MEASUREMENT.match(line, i)
    if m is None:
        raise ValueError("missing measurement")
    measurement = _unescape(_MEASUREMENT_ESCAPE, m.group())
    i = m.end()
    tags: dict[str, str] = {}
    while i < n and line[i] == ",":
        key, i = _key(line, i + 1, "tag")
        if i >= n or line[i] != "=":
            raise ValueError(f"bad tag {_show(key)}: want '=' after the tag key")
        m = _KEY.match(line, i + 1)
        if m is None:
            raise ValueError(f"bad tag {_show(key)}: missing tag value")
        i = m.end()
        if i < n and line[i] == "=":
            raise ValueError(f"bad tag {_show(key)}: unescaped '=' in the tag value")
        if key in tags:
            raise ValueError(f"duplicate tag {_show(key)}")
        tags[key] = _unescape(_KEY_ESCAPE, m.group())
    if i >= n:
        raise ValueError("missing fields: want `measurement[,tags] fields [timestamp]`")
    if line[i] != " ":
        raise ValueError(f"unexpected {line[i]!r} after the measurement and tags")
    i = _SPACES.match(line, i).end()
    if i >= n:
        raise ValueError("missing fields: want `measurement[,tags] fields [timestamp]`")
    fields: dict[str, FieldValue] = {}
    while True:
        key, i = _key(line, i, "field")
        if i >= n or line[i] != "=":
            raise ValueError(f"bad field {_show(key)}: want '=' after the field key")
        fields[key], i = _field_value(line, i + 1, key)
        if i < n and line[i] == ",":
            i += 1
            continue
        if i < n and line[i] != " ":
            raise ValueError(f"field {_show(key)}: unexpected {line[i]!r} after the value")
        break
    i = _SPACES.match(line, i).end()
    if i >= n:
        return Parsed(measurement, tags, fields, None)
    end = line.find(" ", i)
    end = n if end < 0 else end
    raw = line[i:end]
    if _SPACES.match(line, end).end() < n:
        raise ValueError(f"unexpected text after the timestamp: {_show(line[end:].lstrip(' '))}")
    if not _INT.fullmatch(raw):
        raise ValueError(f"timestamp {_show(raw)} is not an integer")
    stamp = int(raw) if len(raw) <= _DIGITS_MAX else MAX_UINT64
    if abs(stamp) > MAX_STAMP:
        raise ValueError("timestamp out of range")
    return Parsed(measurement, tags, fields, stamp)


def _key(line: str, i: int, what: str) -> tuple[str, int]:
    """A tag or field key at `i`, unescaped, and where it ends."""
    m = _KEY.match(line, i)
    if m is None:
        found = repr(line[i]) if i < len(line) else "the end of the line"
        raise ValueError(f"bad {what}: want a {what} key, found {found}")
    return _unescape(_KEY_ESCAPE, m.group()), m.end()


def _field_value(line: str, i: int, key: str) -> tuple[FieldValue, int]:
    """The field value at `i` and where it ends."""
    if i < len(line) and line[i] == '"':
        m = _STRING.match(line, i)
        if m is None:
            raise ValueError(f"field {_show(key)}: unterminated string value")
        return _unescape(_STRING_ESCAPE, m.group(1)), m.end()
    m = _PLAIN.match(line, i)
    if m is None:
        raise ValueError(f"field {_show(key)}: missing value")
    try:
        return scalar(m.group()), m.end()
    except ValueError as exc:
        raise ValueError(f"field {_show(key)}: {exc}") from None


def scalar(raw: str) -> FieldValue:
    """An unquoted field value: boolean, integer (`i`), unsigned (`u`) or float."""
    if not raw:
        raise ValueError("missing value")
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    if raw[-1] == "i" and _INT.fullmatch(raw, 0, len(raw) - 1):
        value = int(raw[:-1]) if len(raw) <= _DIGITS_MAX + 1 else MAX_UINT64
        if not -MAX_INT64 - 1 <= value <= MAX_INT64:
            raise ValueError(f"integer {_show(raw)} is out of range (int64)")
        return value
    if raw[-1] == "u" and _UINT.fullmatch(raw, 0, len(raw) - 1):
        value = int(raw[:-1]) if len(raw) <= _DIGITS_MAX + 1 else MAX_UINT64 + 1
        if value > MAX_UINT64:
            raise ValueError(f"unsigned integer {_show(raw)} is out of range (uint64)")
        return value
    if _FLOAT.fullmatch(raw):
        number = float(raw)
        if not math.isfinite(number):
            raise ValueError(f"float {_show(raw)} is out of range")
        return number
    if raw[-1] == "u" and _INT.fullmatch(raw, 0, len(raw) - 1):
        raise ValueError(f"unsigned integer {_show(raw)} is negative")
    raise ValueError(f"{_show(raw)} is not a number, boolean or quoted string")


def _unescape(escape: re.Pattern[str], raw: str) -> str:
    return escape.sub(r"\1", raw) if "\\" in raw else raw


def _show(text: str) -> str:
    """A token for a message: quoted, at most 40 characters of it."""
    return repr(text if len(text) <= 40 else text[:37] + "...")
