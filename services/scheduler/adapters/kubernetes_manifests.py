"""The Kubernetes objects of one attempt of a run, as plain wire-form dicts (camelCase, as the API takes them).

Per learner a pod, bound by our scheduler (`schedulerName`), with `nvidia.com/gpu` requests equal
to limits, a node selector on the node's GPU product, the framework's image, the runner as its
entrypoint and no privileges; its runner.json (the run's token and grant) in a Secret the pod
owns, deleted once the pod has ended. Learner pods are under one headless Service of the runs'
namespace (deployed with the platform, not made per run, so that the scheduler needs no rights on
Services): each pod of a gang has a stable DNS name, and learners reach the first one (torchrun's
rendezvous) by it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "dlaas-scheduler"
RUN_ID_LABEL = "dlaas.io/run-id"
ATTEMPT_LABEL = "dlaas.io/attempt"
LEARNER_LABEL = "dlaas.io/learner"
RUN_ANNOTATION = "dlaas.io/run"
LEARNERS_ANNOTATION = "dlaas.io/learners"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
SELECTOR = f"{MANAGED_BY}={MANAGER}"

RUNNER_CONTAINER = "runner"
LOG_CONTAINER = "training-log"
CONFIG_DIR = "/etc/dlaas"
JOB_DIR = "/var/lib/dlaas/job"
RENDEZVOUS_PORT = 29500
LEARNERS_SERVICE = "dlaas-learners"
RUNNER_UID = 1000


@dataclass(frozen=True)
class Learner:
    """One learner's pod: which of the gang it is, where it goes and what it holds."""

    index: int  # 0-based; LEARNER_ID is index + 1
    node: str
    gpu_product: str
    gpus: int


def attempt_prefix(run_id: str, attempt: int) -> str:
    return f"{run_id}-a{attempt}"


def pod_name(run_id: str, attempt: int, index: int) -> str:
    return f"{attempt_prefix(run_id, attempt)}-{index}"


def attempt_labels(run_id: str, attempt: int) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, RUN_ID_LABEL: run_id, ATTEMPT_LABEL: str(attempt)}


def _hardened() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _quantity_cpu(cpus: float) -> str:
    return f"{max(1, math.ceil(cpus * 1000))}m"


def pod_manifest(
    *,
    namespace: str,
    run: str,
    run_id: str,
    attempt: int,
    learner: Learner,
    learners: int,
    image: str,
    scheduler_name: str,
    cpus: float,
    memory_mib: int,
    grace_s: int,
) -> dict[str, Any]:
    name = pod_name(run_id, attempt, learner.index)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if learner.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(learner.gpus)
    if cpus > 0:
        requests["cpu"] = _quantity_cpu(cpus)
    if memory_mib > 0:
        requests["memory"] = limits["memory"] = f"{memory_mib}Mi"
    spec: dict[str, Any] = {
        "schedulerName": scheduler_name,
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "runAsGroup": RUNNER_UID,
            "fsGroup": RUNNER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [
            {
                # A native sidecar: the pod log API's view of the training log (the command's output).
                "name": LOG_CONTAINER,
                "image": image,
                "restartPolicy": "Always",
                "command": ["tail", "-n", "+1", "-F", f"{JOB_DIR}/training.log"],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
                "securityContext": _hardened(),
                "volumeMounts": [{"name": "job", "mountPath": JOB_DIR, "readOnly": True}],
            }
        ],
        "containers": [
            {
                "name": RUNNER_CONTAINER,
                "image": image,
                "command": ["python", "-m", "dlaas.runner", f"{CONFIG_DIR}/runner.json"],
                "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
                "resources": {"requests": requests, "limits": limits},
                "securityContext": _hardened(),
                "volumeMounts": [
                    {"name": "runner-config", "mountPath": CONFIG_DIR, "readOnly": True},
                    {"name": "job", "mountPath": JOB_DIR},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "runner-config", "secret": {"secretName": name, "defaultMode": 0o440}},
            {"name": "job", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if learner.gpu_product:
        spec["nodeSelector"] = {GPU_PRODUCT_LABEL: learner.gpu_product}
    if learner.gpus:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if learners > 1:
        spec["hostname"] = name
        spec["subdomain"] = LEARNERS_SERVICE
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**attempt_labels(run_id, attempt), LEARNER_LABEL: str(learner.index)},
            "annotations": {RUN_ANNOTATION: run, LEARNERS_ANNOTATION: str(learners)},
        },
        "spec": spec,
    }


def rendezvous_environment(run_id: str, attempt: int, namespace: str, learners: int, index: int) -> dict[str, str]:
    """What torchrun (and torch.distributed) needs to find the gang: the first learner is the master."""
    master = f"{pod_name(run_id, attempt, 0)}.{LEARNERS_SERVICE}.{namespace}.svc"
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(RENDEZVOUS_PORT),
        "WORLD_SIZE": str(learners),
        "NNODES": str(learners),
        "NODE_RANK": str(index),
        "RANK": str(index),
        "PET_NNODES": str(learners),
        "PET_NODE_RANK": str(index),
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": str(RENDEZVOUS_PORT),
    }


def owner_reference(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        # No blockOwnerDeletion: it would need update on pods/finalizers, beyond the scheduler's Role.
    }


def secret_manifest(pod: Mapping[str, Any], runner_json: Mapping[str, Any]) -> dict[str, Any]:
    """The learner's runner.json, owned by its pod: deleting the pod deletes the token and the grant's keys.

    The scheduler also deletes it as soon as the pod has ended (the pod stays, for its log)."""
    metadata = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": dict(metadata["labels"]),
            "ownerReferences": [owner_reference(pod)],
        },
        "stringData": {"runner.json": json.dumps(runner_json)},
    }


def learners_service_manifest(namespace: str) -> dict[str, Any]:
    """The headless Service every learner pod is under (deploy/base/runs has it): DNS names for gangs."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": LEARNERS_SERVICE, "namespace": namespace},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {MANAGED_BY: MANAGER},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def binding_manifest(pod: Mapping[str, Any], node: str) -> dict[str, Any]:
    metadata = pod["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
