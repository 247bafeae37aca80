"""`make validate-deploy`: renders every overlay and validates every object, strictly.

Rendering is deploy/kustomize.py (the subset of kustomize deploy/ uses; tests check it against
`kubectl kustomize` where a current kubectl is installed). Each object is validated with
kubernetes-validate in strict mode (unknown fields and typos are errors) against the Kubernetes
version below, then checked for what the schemas cannot say: hardened containers (no privilege
escalation, read-only root, all capabilities dropped, non-root), native gRPC probes on our
services, and GPU requests equal to their limits.
The last line says how many objects were validated.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate

sys.path.insert(0, str(Path(__file__).parent))
from kustomize import build  # a script beside this one, not a package

KUBERNETES_VERSION = "1.32"
OVERLAYS = Path(__file__).parent / "overlays"
OUR_IMAGES = ("dlaas/", "registry.example.com/dlaas/")


def _containers(obj: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    pod = obj.get("spec", {}).get("template", {}).get("spec") if obj["kind"] != "Pod" else obj.get("spec")
    if not pod:
        return
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        yield pod, container


def problems(obj: dict[str, Any]) -> Iterator[str]:
    for pod, container in _containers(obj):
        where = f"{obj['kind']}/{obj['metadata']['name']} container {container['name']}"
        context = container.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"{where}: allowPrivilegeEscalation must be false"
        if context.get("readOnlyRootFilesystem") is not True:
            yield f"{where}: readOnlyRootFilesystem must be true"
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            yield f"{where}: capabilities must drop ALL"
        if not (context.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")):
            yield f"{where}: runAsNonRoot must be true"
        if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
            yield f"{where}: the pod's seccompProfile must be RuntimeDefault"
        resources = container.get("resources", {})
        gpu_request = resources.get("requests", {}).get("nvidia.com/gpu")
        if gpu_request != resources.get("limits", {}).get("nvidia.com/gpu"):
            yield f"{where}: nvidia.com/gpu requests must equal limits"
        if str(container.get("image", "")).startswith(OUR_IMAGES) and obj["kind"] == "Deployment":
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" not in container.get(probe, {}):
                    yield f"{where}: {probe} must be a native gRPC probe"


def main() -> int:
    overlays = sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())
    count = 0
    failures: list[str] = []
    for overlay in overlays:
        for obj in build(overlay):
            name = f"{overlay.name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{name}: {exc.message} at {'.'.join(str(p) for p in exc.path)}")
            failures.extend(f"{overlay.name}: {problem}" for problem in problems(obj))
            count += 1
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        print(f"validate-deploy: {len(failures)} problem(s) in {count} objects", file=sys.stderr)
        return 1
    names = ", ".join(o.name for o in overlays)
    print(f"validated {count} objects ({names}) strictly against Kubernetes {KUBERNETES_VERSION}: objects={count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
