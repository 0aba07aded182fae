"""deploy/kubernetes/ against the Kubernetes objects' JSON Schemas (kubernetes-validate), strictly
(unknown fields refused), and the links between the objects that schemas cannot see."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.deploy_files import DEPLOY, env_names_in_container_config

K8S = DEPLOY / "kubernetes"
VERSION = latest_version()


def _objects() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


@pytest.fixture
def objects() -> dict[str, dict[str, Any]]:
    return _objects()


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")
                                        if p.name != "kustomization.yaml"))
def test_manifest_is_valid_for_kubernetes(path: str) -> None:
    for doc in yaml.safe_load_all((K8S / path).read_text()):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_refuses_a_broken_object(objects: dict[str, dict[str, Any]]) -> None:
    broken = copy.deepcopy(objects["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)
    broken = copy.deepcopy(objects["HorizontalPodAutoscaler"])
    broken["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_required_objects_are_there(objects: dict[str, dict[str, Any]]) -> None:
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler",
            "PodDisruptionBudget"} <= set(objects)


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def _pod(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return dict(objects["Deployment"]["spec"]["template"]["spec"])


def test_pods_run_restricted(objects: dict[str, dict[str, Any]]) -> None:
    pod = _pod(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"]


def test_probes_and_migration(objects: dict[str, dict[str, Any]]) -> None:
    pod = _pod(objects)
    gateway = pod["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert [c["args"][0] for c in pod["initContainers"]] == ["migrate"]
    assert gateway["args"][0] == "serve"


def test_objects_point_at_each_other(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    name = deployment["metadata"]["name"]
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", name)
    assert objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
    # The PDB leaves at least one pod while another is drained.
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] \
        < objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
    pod = _pod(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    claim = volumes["attachments"]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    assert objects["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    for container in pod["containers"] + pod["initContainers"]:
        refs = [e["secretRef"]["name"] for e in container["envFrom"]]
        assert refs == [objects["Secret"]["metadata"]["name"]]


def test_configmap_carries_the_container_config(objects: dict[str, dict[str, Any]]) -> None:
    text = objects["ConfigMap"]["data"]["gateway.toml"]
    assert text == (DEPLOY / "container.toml").read_text()


def test_secret_has_every_variable_and_only_placeholders(
        objects: dict[str, dict[str, Any]]) -> None:
    values = objects["Secret"]["stringData"]
    assert env_names_in_container_config() <= set(values)
    for key, value in values.items():
        assert "change-me" in value, f"{key} looks like a real secret: never commit one"

