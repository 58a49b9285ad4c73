"""The install path of README.md and docs/quickstart.md: a wheel built from the checkout,
installed into fresh virtualenvs, as a deployer without a package index for afmon does it.

One module-scoped wheelhouse: the checkout's wheel plus every dependency of `afmon[server]`,
made with `pip wheel` (from pip's cache or the index: the only step that may use the network).
The virtualenvs then install from it alone (`--no-index --find-links`, no pip configuration),
so they get exactly what the wheel's metadata asks for:

- `pip install afmon`: the node agent alone. No FastAPI, Dash, pandas or SQLAlchemy arrive,
  and `afmon-agent` runs.
- `pip install "afmon[server]"`: the server. `afmon --version` runs, and `afmon serve` from
  that virtualenv alone (not this test environment) starts and serves the API and dashboard.

The wheel puts one top-level package, `afmon`, into site-packages (and its console scripts),
nothing named `dashboard` or `alerts` beside a user's own packages. About a minute in all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("collectors", "aggregator", "dashboard", "alerts")
SERVER_ONLY = ("fastapi", "dash", "pandas", "sqlalchemy", "sqlmodel", "uvicorn", "plotly")


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=900, **kwargs
    )


def offline_env() -> dict[str, str]:
    """pip without this machine's configuration (index mirrors, find-links, constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "AFMON_"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel of the checkout's files, a folder with it, its sdist and all their
    dependencies, setuptools included to build the sdist offline)."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    src = tmp / "src"  # a copy: building leaves build/ and *.egg-info behind
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    built = run(  # the documented way: `python -m build` gives the sdist and the wheel
        sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation",
        "--outdir", tmp / "dist", src,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("afmon-*.whl")
    (sdist,) = (tmp / "dist").glob("afmon-*.tar.gz")
    house = tmp / "wheelhouse"
    fetched = run(sys.executable, "-m", "pip", "wheel", "--quiet", "-w", house,
                  f"{wheel}[server]", "setuptools>=77")  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    shutil.copy2(sdist, house / sdist.name)
    return wheel, house


def fresh_venv(where: Path, house: Path, requirement: str) -> tuple[Path, Path, set[str]]:
    """(the venv, its site-packages, what the install added there) for `requirement`."""
    made = run(sys.executable, "-m", "venv", where)
    assert made.returncode == 0, made.stderr
    python = where / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .stdout.strip())  # fmt: skip
    before = set(os.listdir(site))
    done = run(python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", house,
               requirement, env=offline_env())  # fmt: skip
    assert done.returncode == 0, done.stderr
    return where, site, set(os.listdir(site)) - before


def test_the_sdist_installs_the_agent_in_a_fresh_venv(
    wheelhouse: tuple[Path, Path], tmp_path: Path
) -> None:
    """The source distribution builds offline (setuptools from the wheelhouse) and gives a
    working agent."""
    (sdist,) = wheelhouse[1].glob("afmon-*.tar.gz")
    venv, _site, added = fresh_venv(tmp_path / "venv", wheelhouse[1], str(sdist))
    assert "afmon" in added
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
    version = run(venv / "bin" / "afmon-agent", "--version", cwd=tmp_path, env=env)
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr


@pytest.fixture(scope="module")
def agent_venv(
    wheelhouse: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, set[str]]:
    return fresh_venv(tmp_path_factory.mktemp("agent") / "venv", wheelhouse[1], "afmon")


@pytest.fixture(scope="module")
def server_venv(
    wheelhouse: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, set[str]]:
    return fresh_venv(tmp_path_factory.mktemp("server") / "venv", wheelhouse[1], "afmon[server]")


def test_site_packages_gains_only_the_afmon_namespace(
    agent_venv: tuple[Path, Path, set[str]],
) -> None:
    _venv, site, added = agent_venv
    afmon = site / "afmon"
    assert sorted(p.name for p in afmon.iterdir()) == sorted(FOLDERS)
    assert not (afmon / "__init__.py").exists()  # a namespace: room for nothing else of ours
    for folder in FOLDERS:
        assert (afmon / folder / "__init__.py").is_file()
        assert folder not in added
    record = (site / "afmon-0.1.0.dist-info" / "RECORD").read_text().splitlines()
    tops = {line.split(",")[0].split("/")[0] for line in record}
    assert tops == {"afmon", "afmon-0.1.0.dist-info", ".."}  # ..: the console scripts in bin/


def test_the_wheel_carries_every_module_and_data_file(wheelhouse: tuple[Path, Path]) -> None:
    wheel, _house = wheelhouse
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


def test_the_agent_alone_pulls_no_server_packages_and_runs(
    agent_venv: tuple[Path, Path, set[str]], tmp_path: Path
) -> None:
    venv, site, _added = agent_venv
    listed = run(venv / "bin" / "python", "-m", "pip", "list", "--format=json",
                 env=offline_env())  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "afmon" in names and "psutil" in names and "httpx" in names
    assert names.isdisjoint(SERVER_ONLY), sorted(names & set(SERVER_ONLY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
    version = run(venv / "bin" / "afmon-agent", "--version", cwd=tmp_path, env=env)
    assert version.returncode == 0, version.stderr
    assert "0.1.0" in version.stdout
    agent = run(venv / "bin" / "afmon-agent", "--help", cwd=tmp_path, env=env)
    assert agent.returncode == 0, agent.stderr
    assert "AFMON_" in agent.stdout
    # the `afmon` command comes with it: its version works, its server commands say what
    # to install instead of a traceback
    server_cli = run(venv / "bin" / "afmon", "--version", cwd=tmp_path, env=env)
    assert server_cli.returncode == 0 and "0.1.0" in server_cli.stdout, server_cli.stderr
    serve = run(venv / "bin" / "afmon", "serve", cwd=tmp_path, env=env)
    assert serve.returncode == 2 and "Traceback" not in serve.stderr, serve.stderr
    assert "pip install 'afmon[server]'" in serve.stderr
    where = run(venv / "bin" / "python", "-c",
                "import afmon.collectors.agent as a; print(a.__file__)", cwd=tmp_path)  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stderr
    bare = run(venv / "bin" / "python", "-c", "import aggregator", cwd=tmp_path)
    assert "No module named 'aggregator'" in bare.stderr


@pytest.fixture
def served(server_venv: tuple[Path, Path, set[str]], tmp_path: Path) -> Iterator[str]:
    """`afmon serve` from the server virtualenv alone, on SQLite; its URL."""
    venv, _site, _added = server_venv
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
    env.update(AFMON_PORT=str(port), AFMON_DATABASE_URL=f"sqlite:///{tmp_path}/afmon.sqlite",
               AFMON_LOCAL_MODE="true")  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([venv / "bin" / "afmon", "serve"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail(f"afmon serve did not answer in 120 s: {log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_server_extra_gives_a_working_afmon(
    server_venv: tuple[Path, Path, set[str]], served: str, tmp_path: Path
) -> None:
    venv, site, _added = server_venv
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
    version = run(venv / "bin" / "afmon", "--version", cwd=tmp_path, env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == "afmon 0.1.0"
    helped = run(venv / "bin" / "afmon", "--help", cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    for command in ("serve", "demo", "report", "alerts"):
        assert command in helped.stdout
    where = run(venv / "bin" / "python", "-c",
                "import afmon.aggregator.cli.main as m, afmon.dashboard.app as d; "
                "print(m.__file__); print(d.__file__)", cwd=tmp_path)  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split())
    health = httpx.get(f"{served}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["version"] == "0.1.0"
    assert httpx.get(f"{served}/", timeout=30).status_code == 200  # the dashboard
    assert httpx.get(f"{served}/api/v1/usage", params={"start": 0, "end": 1},
                     timeout=30).status_code == 200  # fmt: skip
