"""The configuration reference names every setting, and --help works for both commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from afmon.aggregator.core.settings import ServerSettings
from afmon.collectors.settings import AgentSettings

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_lists_every_setting() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for cls in (ServerSettings, AgentSettings):
        missing = [
            f"AFMON_{name.upper()}"
            for name in cls.model_fields
            if f"AFMON_{name.upper()}" not in text
        ]
        assert not missing, f"docs/configuration.md lacks {missing}"


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
        "make demo",
        "make test",
    ]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_afmon_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for command in ("serve", "demo", "simulate", "identity"):
        assert command in out
    serve = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "AFMON_DATABASE_URL" in serve
