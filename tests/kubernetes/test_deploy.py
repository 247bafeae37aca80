"""deploy/ and the manifests the backend generates: rendered, validated strictly, checked for what schemas miss."""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from dlaas.types.v1 import run_pb2
from services.scheduler.adapters.kubernetes_backend import KubernetesBackend, KubernetesOptions, node_from_object
from services.scheduler.adapters.kubernetes_manifests import (
    Learner,
    binding_manifest,
    learners_service_manifest,
    pod_manifest,
    secret_manifest,
)
from tests.kubernetes.apiserver import node_object

DEPLOY = Path(__file__).parents[2] / "deploy"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _script(name: str) -> ModuleType:
    sys.path.insert(0, str(DEPLOY))
    try:
        spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(DEPLOY))


def test_validate_deploy_passes_and_says_how_many_objects(capsys: pytest.CaptureFixture[str]) -> None:
    assert _script("validate").main() == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.search(r"objects=\d+$", last) and int(last.rsplit("=", 1)[1]) > 50


def test_validate_deploy_refuses_a_container_that_may_escalate() -> None:
    validate = _script("validate")
    [deployment] = [
        o
        for o in _script("kustomize").build(DEPLOY / "overlays" / "dev")
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "dlaas-scheduler"
    ]
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert any("allowPrivilegeEscalation" in p for p in validate.problems(deployment))


def _kubectl_kustomize_v5() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, check=False).stdout
    return kubectl if "Kustomize Version: v5" in version else None


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Secret":  # kustomize wraps base64 at 76 columns; the bytes are what count
        obj = {**obj, "data": {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}}
    return obj


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_our_renderer_matches_kubectl_kustomize(overlay: str) -> None:
    kubectl = _kubectl_kustomize_v5()
    if kubectl is None:
        pytest.skip("no kubectl with kustomize v5 here")
    folder = DEPLOY / "overlays" / overlay
    rendered = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout

    def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): _comparable(o) for o in objects}

    assert keyed(_script("kustomize").build(folder)) == keyed([d for d in yaml.safe_load_all(rendered) if d])


def _learner_pods(learners: int) -> list[dict[str, Any]]:
    return [
        pod_manifest(
            namespace="dlaas-runs",
            run="accounts/team/runs/run-0123456789ab",
            run_id="run-0123456789ab",
            attempt=3,
            learner=Learner(index, f"node-{index}", "NVIDIA-H100-80GB-HBM3", 4),
            learners=learners,
            image="dlaas/runner-pytorch:2.13",
            scheduler_name="dlaas-scheduler",
            cpus=1.5,
            memory_mib=8192,
            grace_s=300,
        )
        for index in range(learners)
    ]


@pytest.mark.parametrize("learners", [1, 2])
def test_every_generated_manifest_is_valid_strictly_and_holds_its_gpus(learners: int) -> None:
    pods = _learner_pods(learners)
    for index, pod in enumerate(pods):
        pod["metadata"]["uid"] = f"uid-{index}"
    objects: list[dict[str, Any]] = [
        *pods,
        *(secret_manifest(p, {"run_token": "secret"}) for p in pods),
        *(binding_manifest(p, f"node-{i}") for i, p in enumerate(pods)),
    ]
    for obj in objects:
        wire = dict(obj)
        wire["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "uid"}
        kubernetes_validate.validate(wire, "1.32", strict=True)
        assert DNS_1123.match(obj["metadata"]["name"]) and len(obj["metadata"]["name"]) <= 63
    for pod in pods:
        spec = pod["spec"]
        runner = spec["containers"][0]
        assert runner["resources"]["requests"]["nvidia.com/gpu"] == runner["resources"]["limits"]["nvidia.com/gpu"]
        assert spec["schedulerName"] == "dlaas-scheduler" and "nodeName" not in spec  # bound by us, later
        assert runner["securityContext"]["allowPrivilegeEscalation"] is False
        assert runner["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert spec["automountServiceAccountToken"] is False


def test_the_learners_service_deployed_is_the_one_gangs_pods_name() -> None:
    deployed = [
        o
        for o in _script("kustomize").build(DEPLOY / "overlays" / "production")
        if o["kind"] == "Service" and o["metadata"]["name"] == "dlaas-learners"
    ]
    expected = learners_service_manifest("dlaas-runs")
    assert len(deployed) == 1
    assert deployed[0]["metadata"]["namespace"] == "dlaas-runs"
    assert deployed[0]["spec"] == expected["spec"]
    kubernetes_validate.validate(expected, "1.32", strict=True)


def _rights(kind: str) -> dict[str, list[str]]:
    """resource → verbs the production overlay grants the scheduler, from its one object of `kind`."""
    [role] = [o for o in _script("kustomize").build(DEPLOY / "overlays" / "production") if o["kind"] == kind]
    rights: dict[str, list[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule  # the core group only
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no nonResourceURLs
        for resource in rule["resources"]:
            rights[resource] = sorted({*rights.get(resource, []), *rule["verbs"]})
    return rights


def test_the_scheduler_holds_exactly_the_rights_it_uses() -> None:
    # Secrets: created with each pod, deleted once it ended; never read back, listed or watched.
    assert _rights("Role") == {
        "pods": ["create", "delete", "get", "list", "watch"],
        "pods/binding": ["create"],
        "pods/log": ["get"],
        "secrets": ["create", "delete"],
    }
    assert _rights("ClusterRole") == {"nodes": ["get", "list", "watch"]}


def _spec(framework: str, version: str = "") -> run_pb2.RunSpec:
    return run_pb2.RunSpec(framework=run_pb2.Framework(name=framework, version=version))


def test_a_versioned_image_wins_over_the_frameworks_own_and_a_missing_one_names_the_field() -> None:
    images = {"python": "runner:1", "python:3.12": "runner-py312:1", "pytorch:2.13": "runner-pytorch:2.13"}
    backend = KubernetesBackend(
        client.ApiClient(client.Configuration(host="http://127.0.0.1:9")),  # never called
        KubernetesOptions(namespace="dlaas-runs", scheduler_name="dlaas-scheduler", images=images),
    )
    assert backend.image_for("python", "3.12") == "runner-py312:1"
    assert backend.image_for("python", "3.11") == backend.image_for("python", "") == "runner:1"
    assert backend.image_for("pytorch", "2.13") == "runner-pytorch:2.13"
    assert backend.refusal(_spec("python", "2.7")) is None  # the framework's own image takes any version

    refused = backend.refusal(_spec("pytorch", "2.0"))
    assert refused is not None and refused[1] == "FRAMEWORK_IMAGE_MISSING"
    assert refused[0].startswith("framework.version: ") and "pytorch 2.0" in refused[0]
    refused = backend.refusal(_spec("jax", "0.4"))
    assert refused is not None and refused[1] == "FRAMEWORK_IMAGE_MISSING"
    assert refused[0].startswith("framework.name: ") and "jax 0.4" in refused[0]


def test_nodes_come_from_allocatable_gpus_and_labels_skipping_cordoned_and_not_ready() -> None:
    ready = node_object("n1", "NVIDIA-H100-80GB-HBM3", 8)
    found = node_from_object(ready)
    assert found is not None and (found[0].gpu_type, found[0].gpu_count) == ("h100", 8)
    assert node_from_object(node_object("n2", "NVIDIA-H100-80GB-HBM3", 8, ready=False)) is None
    cordoned = node_object("n3", "NVIDIA-A100-SXM4-40GB", 4)
    cordoned["spec"]["unschedulable"] = True
    assert node_from_object(cordoned) is None
    assert node_from_object(node_object("cpu", "", 0)) is None
