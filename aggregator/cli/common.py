"""What the `afmon` commands share: the epilog on settings, settings from flags, and how a
bad setting stops a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn, TextIO

from pydantic import ValidationError
from pydantic_settings import SettingsError

from afmon.aggregator.cli.settings_errors import settings_error_line, validation_lines
from afmon.aggregator.core.settings import ServerSettings

EPILOG = """\
Every setting can also be given as an environment variable with the AFMON_ prefix
(AFMON_DATABASE_URL, AFMON_FACILITY_TOKENS, ...); see docs/configuration.md.
Command-line flags win over the environment."""


EXIT_BAD_SETTING = 2  # as argparse does for bad usage

# Settings that `afmon` commands also take as flags (a flag wins over the environment).
FLAG_FIELDS = ("host", "port", "database_url", "identity_file", "log_level")


def refuse(*lines: str) -> NoReturn:
    """Stop with exit status 2 and one line on stderr per problem."""
    for line in lines:
        print(f"afmon: {line}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_SETTING)


def flag_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The settings given as flags on this command line."""
    values = {name: getattr(args, name, None) for name in FLAG_FIELDS}
    return {name: value for name, value in values.items() if value is not None}


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """The server's settings: the environment, overridden by the command's flags. A bad
    setting stops the command (exit 2) with one line per problem naming its variable."""
    overrides = flag_overrides(args)
    try:
        return ServerSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        refuse(*validation_lines(ServerSettings, exc, overrides))
    except SettingsError as exc:  # e.g. a JSON setting that is not JSON
        refuse(settings_error_line(ServerSettings, exc))


def checked_database_url(args: argparse.Namespace, settings: ServerSettings) -> str:
    """The settings' database URL once it is one afmon can use (a supported scheme; for
    SQLite a file in an existing directory), else the command stops as `afmon serve` would."""
    from afmon.aggregator.cli.preflight import StartupError, check_database_url
    from afmon.aggregator.cli.settings_errors import setting

    overrides = flag_overrides(args)
    try:
        check_database_url(
            settings.database_url, lambda f, v: setting(ServerSettings, f, v, overrides)
        )
    except StartupError as exc:
        refuse(str(exc))
    return settings.database_url


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
