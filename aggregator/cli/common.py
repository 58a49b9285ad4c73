"""What the `afmon` commands share: the epilog on settings, and settings from flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from pydantic import ValidationError
from pydantic_settings import SettingsError

from afmon.aggregator.core.settings import ServerSettings

EPILOG = """\
Every setting can also be given as an environment variable with the AFMON_ prefix
(AFMON_DATABASE_URL, AFMON_FACILITY_TOKENS, ...); see docs/configuration.md.
Command-line flags win over the environment."""


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    overrides = {
        k: v
        for k, v in {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "database_url": getattr(args, "database_url", None),
            "identity_file": getattr(args, "identity_file", None),
        }.items()
        if v is not None
    }
    try:
        return ServerSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across settings: its message names them
            sys.exit(f"afmon: bad settings: {first['msg'].removeprefix('Value error, ')}")
        sys.exit(f"afmon: bad setting AFMON_{str(first['loc'][0]).upper()}: {first['msg']}")
    except SettingsError as exc:  # e.g. a JSON setting that is not JSON
        sys.exit(f"afmon: bad setting: {exc}")


def progress_bar(title: str, stream: TextIO | None = None) -> Callable[[str, int, int], None]:
    """A one-line progress bar on a terminal (default: standard error, looked up when the bar
    is made); nothing when the stream is not a terminal."""
    stream = stream or sys.stderr

    def show(label: str, done: int, total: int) -> None:
        if not stream.isatty():
            return
        frac = min(1.0, done / total) if total else 1.0
        bar = "#" * int(frac * 30)
        end = "\n" if frac >= 1 else ""
        stream.write(f"\r\x1b[2K{title} [{bar:<30}] {frac * 100:5.1f}% {label}{end}")
        stream.flush()

    return show
