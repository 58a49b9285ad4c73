"""An alert's identity as Alertmanager sees it: fingerprint, label-set text and group key.

Receivers deduplicate and thread notifications by these values, and Alertmanager's API
answers with them, so afmon computes them exactly as Alertmanager does (prometheus/common
`model.LabelSet.Fingerprint` and `String`, Alertmanager's `aggrGroup.GroupKey`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1
_SEPARATOR = 0xFF  # cannot occur in UTF-8: names and values cannot run into each other
ROOT_ROUTE_KEY = "{}"  # the key of Alertmanager's root route (no matchers)


def present(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels without empty values: Alertmanager drops them on receipt (an empty
    label is an absent one, as in Prometheus), so they are not part of the identity."""
    return {k: v for k, v in labels.items() if v != ""}


def fingerprint(labels: Mapping[str, str]) -> str:
    """64-bit FNV-1a over the sorted names and their values, each followed by 0xff; as
    16 hex digits, the `fingerprint` of Alertmanager's API and webhook."""
    h = _FNV_OFFSET
    ls = present(labels)
    for name in sorted(ls):  # Go sorts by bytes: the same order as code points for UTF-8
        for part in (name, ls[name]):
            for byte in (*part.encode(), _SEPARATOR):
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


def _go_quote(value: str) -> str:
    """Go's strconv.Quote: printable runes as they are, the rest escaped."""
    named = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "\v": "\\v", "\\": "\\\\", '"': '\\"'}  # fmt: skip
    out = []
    for ch in value:
        if ch in named:
            out.append(named[ch])
        elif ch.isprintable():  # Unicode letters, marks, numbers, punctuation, symbols, ' '
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def label_set_string(labels: Mapping[str, str]) -> str:
    """`{a="1", b="2"}`: prometheus/common's LabelSet.String (sorted, Go-quoted values)."""
    return "{" + ", ".join(f"{k}={_go_quote(labels[k])}" for k in sorted(labels)) + "}"


def group_labels(alerts: Iterable[Mapping[str, str]], group_by: Iterable[str]) -> dict[str, str]:
    """The `group_by` labels that every alert has with the same value: the labels of the
    Alertmanager group these alerts would share."""
    dicts = [present(a) for a in alerts]
    out: dict[str, str] = {}
    for name in group_by:
        values = {d.get(name) for d in dicts}
        if len(values) == 1 and None not in values:
            out[name] = values.pop()  # type: ignore[assignment]
    return out


def group_key(labels: Mapping[str, str], route_key: str = ROOT_ROUTE_KEY) -> str:
    """Alertmanager's `groupKey`: `<route key>:<group labels>`, e.g.
    `{}:{alertname="AfmonAgentSilent", facility="af"}` for the root route."""
    return f"{route_key}:{label_set_string(labels)}"
