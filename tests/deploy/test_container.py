"""The container build (deploy/container/) agrees with the manifests that run its image: the
image is not built here (it needs a Debian mirror, PyPI and minutes; deploy/container/README.md),
so what the manifests rely on is checked in the files themselves."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "deploy" / "container"


def containerfile() -> dict[str, str]:
    """Instruction -> its text (the last one of each kind), continuation lines joined."""
    text = (CONTAINER / "Containerfile").read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out[word.upper()] = rest.strip()
    return out


def pod(kind: str, name: str) -> dict:
    for path in (ROOT / "deploy" / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc["spec"]["template"]["spec"]
    raise AssertionError(f"{kind}/{name} not found")


def test_no_base_image_is_pulled() -> None:
    assert containerfile()["FROM"] == "scratch"


def test_the_manifests_run_what_the_image_has() -> None:
    cf = containerfile()
    assert cf["ENTRYPOINT"] == '["/opt/afmon/bin/afmon"]'
    assert "PATH=/opt/afmon/bin:" in cf["ENV"]  # the DaemonSet's command is plain afmon-agent
    assert cf["USER"] == "10001:10001"
    server = pod("Deployment", "afmon-server")
    assert server["securityContext"]["runAsUser"] == 10001
    assert server["containers"][0]["args"] == ["serve"]
    agent = pod("DaemonSet", "afmon-agent")
    assert agent["containers"][0]["command"] == ["afmon-agent"]
    build = (CONTAINER / "build.sh").read_text()
    tag = build.split("tag=${1:-", 1)[1].split("}", 1)[0]
    assert server["containers"][0]["image"] == agent["containers"][0]["image"] == tag
    assert "--uid 10001" in build


def test_build_script_is_valid_shell() -> None:
    sh = shutil.which("sh")
    assert sh is not None
    subprocess.run([sh, "-n", str(CONTAINER / "build.sh")], check=True, timeout=60)
