"""The Kubernetes manifests under deploy/kubernetes/ are valid objects of the Kubernetes API
(checked offline against its schemas by kubernetes-validate) and keep what the docs promise:
probes on the right routes, least privilege, host mounts read-only, real setting names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from afmon.aggregator.core.settings import ServerSettings
from afmon.collectors.settings import AgentSettings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
K8S_VERSION = "1.30.0"  # an old-enough release that clusters still run; the newest is checked too


def documents() -> list[dict[str, Any]]:
    docs = [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]
    assert docs, "no manifests under deploy/kubernetes"
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    for doc in documents():
        # strict: an unknown (misspelt) field fails instead of being silently dropped
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    """The check is not vacuous: a typo in a probe fails it."""
    deployment = find("Deployment", "afmon-server")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_server_probes_security_and_settings() -> None:
    pod = find("Deployment", "afmon-server")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    secret = find("Secret", "afmon-server")["stringData"]
    assert secret["AFMON_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert {r.get("secretRef", {}).get("name") for r in c["envFrom"]} >= {"afmon-server"}
    names = set(find("ConfigMap", "afmon-server")["data"]) | set(secret)
    unknown = {n for n in names if n.startswith("AFMON_")} - {
        f"AFMON_{f.upper()}" for f in ServerSettings.model_fields
    }
    assert not unknown, f"not settings of afmon serve: {unknown}"
    port = int(find("ConfigMap", "afmon-server")["data"]["AFMON_PORT"])
    (svc_port,) = find("Service", "afmon")["spec"]["ports"]
    assert c["ports"][0]["containerPort"] == port == svc_port["port"]


def test_agent_least_privilege_and_read_only_host_mounts() -> None:
    pod = find("DaemonSet", "afmon-agent")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["DAC_READ_SEARCH", "SYS_PTRACE"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name, path in host.items():
        if path != "/var/lib/afmon-agent":  # the spool is the only host path written
            assert mounts[name].get("readOnly") is True, f"{path} must be mounted read-only"
    config = find("ConfigMap", "afmon-agent")["data"]
    mounted_at = {host[n]: mounts[n]["mountPath"] for n in host}
    assert config["AFMON_PROC_ROOT"] == mounted_at["/proc"]
    assert config["AFMON_CGROUP_ROOT"] == mounted_at["/sys/fs/cgroup"]
    assert config["AFMON_SPOOL_DIR"] == mounted_at["/var/lib/afmon-agent"]
    names = set(config) | set(find("Secret", "afmon-agent")["stringData"])
    names |= {e["name"] for e in c.get("env", [])}
    unknown = names - {f"AFMON_{f.upper()}" for f in AgentSettings.model_fields}
    assert not unknown, f"not settings of afmon-agent: {unknown}"
