"""What the `afmon` commands share: the epilog on settings, and settings from flags."""

from __future__ import annotations

import argparse
import sys

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
