"""Input data formats from file names (docs/data.md, "Input data formats"): the XRootD probe
classifies each opened file's path at the node, so no file name leaves it, and labels the
member's data-access series with the format.

Patterns are regular expressions searched in the path, tried in order, the first match wins;
a path that none matches (or a file opened without a path) is `other`. The defaults follow
ATLAS dataset names (`DAOD_PHYSLITE.*` before other `DAOD_*`, then `AOD.*`) and CMS LFNs
(`/store/.../MINIAOD[SIM]/...`, `NANOAOD[SIM]`, `AOD[SIM]`), then ROOT files under user
paths as ntuples. `AFMON_XROOTD_FORMAT_PATTERNS` replaces them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FORMATS = ("physlite", "daod", "aod", "miniaod", "nanoaod", "ntuple", "other")
OTHER = "other"
DEFAULT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("physlite", r"DAOD_PHYSLITE\."),
    ("daod", r"DAOD_[A-Z0-9]+\."),
    ("miniaod", r"/store/[^?]*/MINIAOD(SIM)?/"),
    ("nanoaod", r"/store/[^?]*/NANOAOD(SIM)?/"),
    ("aod", r"(^|[/.:])AOD\.|/store/[^?]*/AOD(SIM)?/"),
    ("ntuple", r"(/store/user/|/user/|/home/|/users?\.)[^?]*\.root(\.[0-9]+)?$"),
)


class FormatClassifier:
    """Paths -> one of `FORMATS` by the first matching pattern."""

    def __init__(self, patterns: Sequence[tuple[str, str]] = DEFAULT_PATTERNS) -> None:
        compiled: list[tuple[str, re.Pattern[str]]] = []
        for fmt, pattern in patterns:
            if fmt not in FORMATS:
                raise ValueError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
            compiled.append((fmt, re.compile(pattern)))
        self._patterns = compiled

    def __call__(self, path: str | None) -> str:
        if path:
            for fmt, pattern in self._patterns:
                if pattern.search(path):
                    return fmt
        return OTHER
