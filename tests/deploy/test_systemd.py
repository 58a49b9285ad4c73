"""The systemd units under deploy/systemd/ pass `systemd-analyze verify`, and their hardening
leaves the agent what it reads (/proc of every user, cgroups) and the server nothing more."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from afmon.aggregator.core.settings import ServerSettings
from afmon.collectors.settings import AgentSettings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED_BIN = "/opt/afmon/bin"  # where the units expect afmon (deploy/systemd/README.md)


def systemd_analyze() -> str:
    """The tool, or a failure that says how to get it (never a silent skip)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail(
            "systemd-analyze is needed to check deploy/systemd/*.service: install Debian's "
            "`systemd` package (`make debs` does)"
        )
    return tool


def unit(name: str) -> dict[str, list[str]]:
    """The [Service] section as lists of values (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")) and section == "Service":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("name", ["afmon.service", "afmon-agent.service"])
def test_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's venv
    venv_bin = str(Path(sys.executable).parent)
    assert (Path(venv_bin) / "afmon").exists() and (Path(venv_bin) / "afmon-agent").exists()
    (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED_BIN, venv_bin))
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # systemd-analyze warns about the host's own units too; only ours must be clean
    ours = [line for line in done.stderr.splitlines() if name in line]
    assert done.returncode == 0 and not ours, done.stderr


def test_verify_is_not_vacuous(tmp_path: Path) -> None:
    """A misspelt option fails the same check."""
    venv_bin = str(Path(sys.executable).parent)
    text = (UNITS / "afmon.service").read_text().replace(INSTALLED_BIN, venv_bin)
    (tmp_path / "afmon.service").write_text(text.replace("ProtectHome=", "ProtectHom="))
    done = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(tmp_path / "afmon.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ProtectHom" in done.stderr


def test_server_runs_as_a_dedicated_user_with_no_capability() -> None:
    s = unit("afmon.service")
    assert s["User"] == ["afmon"] and s["EnvironmentFile"] == ["/etc/afmon/afmon.env"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"] and s["StateDirectory"] == ["afmon"]
    assert s["RestartPreventExitStatus"] == ["2"]  # a bad setting is not retried forever
    sysusers = (UNITS / "afmon.sysusers.conf").read_text()
    assert any(line.split()[:2] == ["u", "afmon"] for line in sysusers.splitlines())


def test_agent_keeps_what_reading_proc_and_cgroups_needs() -> None:
    s = unit("afmon-agent.service")
    assert "User" not in s  # root, to read every user's /proc entries ...
    # ... with the two capabilities that reading /proc/PID/io takes
    assert s["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"]
    assert s["ProtectProc"] == ["default"] and s["ProcSubset"] == ["all"]
    assert "PrivateDevices" not in s  # the GPU probe opens /dev/nvidia*
    assert "PrivateUsers" not in s  # uids must stay the host's
    assert s["EnvironmentFile"] == ["/etc/afmon/agent.env"]
    assert s["StateDirectory"] == ["afmon-agent"]


@pytest.mark.parametrize(
    ("example", "settings"),
    [("afmon.env.example", ServerSettings), ("agent.env.example", AgentSettings)],
)
def test_environment_files_name_real_settings(example: str, settings: type) -> None:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string("[env]\n" + (UNITS / example).read_text())
    known = {f"AFMON_{f.upper()}" for f in settings.model_fields}
    assert set(parser["env"]) - known == set()


EXPOSURE = [("afmon.service", 2.0), ("afmon-agent.service", 3.0)]  # measured: 1.4 and 2.5


@pytest.mark.parametrize(("name", "threshold"), EXPOSURE)
def test_exposure_stays_low(name: str, threshold: float, tmp_path: Path) -> None:
    """`systemd-analyze security` rates the sandbox (0 best, 10 unprotected): a removed
    hardening option shows here."""
    venv_bin = str(Path(sys.executable).parent)
    (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED_BIN, venv_bin))
    tenths = round(threshold * 10)  # --threshold is in tenths of the exposure level
    done = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", f"--threshold={tenths}", "--no-pager",
         str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
