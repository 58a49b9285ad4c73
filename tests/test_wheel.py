"""The wheel, built from the checkout and installed into a fresh virtualenv, puts one top-level
package, `afmon`, into site-packages (and its console scripts), nothing named `dashboard` or
`alerts` beside a user's own packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("collectors", "aggregator", "dashboard", "alerts")


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the wheel, the fresh venv, its site-packages) for a wheel of the checkout's files."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    src = tmp / "src"
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--quiet", "-w", tmp / "dist", src,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("afmon-*.whl")
    venv = tmp / "venv"
    made = run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())  # fmt: skip
    before = set(os.listdir(site))
    done = run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", wheel)
    assert done.returncode == 0, done.stderr
    added = set(os.listdir(site)) - before
    assert added == {"afmon", "afmon-0.1.0.dist-info"}
    return wheel, venv, site


def test_site_packages_gains_only_the_afmon_namespace(installed: tuple[Path, Path, Path]) -> None:
    _wheel, _venv, site = installed
    afmon = site / "afmon"
    assert sorted(p.name for p in afmon.iterdir()) == sorted(FOLDERS)
    assert not (afmon / "__init__.py").exists()  # a namespace: room for nothing else of ours
    for folder in FOLDERS:
        assert (afmon / folder / "__init__.py").is_file()


def test_the_wheel_carries_every_module_and_data_file(installed: tuple[Path, Path, Path]) -> None:
    wheel, _venv, _site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"afmon/{p.relative_to(ROOT).as_posix()}"
        for folder in FOLDERS
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts
    }
    assert expected - names == set()
    assert "afmon/alerts/rules/afmon.yaml" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"afmon", "afmon-0.1.0.dist-info"}


def test_the_console_scripts_run_from_the_installed_wheel(
    installed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _wheel, venv, site = installed
    # The wheel went in without its dependencies: take them from the test environment, whose
    # editable afmon is not on this path (.pth files are read from site directories only).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    where = run(
        venv / "bin" / "python", "-c",
        "import afmon.collectors.agent as a, afmon.aggregator.cli.main as m; "
        "print(a.__file__); print(m.__file__)",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split())
    agent = run(venv / "bin" / "afmon-agent", "--help", cwd=tmp_path, env=env)
    assert agent.returncode == 0, agent.stderr
    assert "AFMON_" in agent.stdout
    server = run(venv / "bin" / "afmon", "--help", cwd=tmp_path, env=env)
    assert server.returncode == 0, server.stderr
    for command in ("serve", "demo", "report", "alerts"):
        assert command in server.stdout
    bare = run(venv / "bin" / "python", "-c", "import aggregator", cwd=tmp_path, env=env)
    assert "No module named 'aggregator'" in bare.stderr
