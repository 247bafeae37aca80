"""The subset of kustomize that deploy/ uses, in Python: `python deploy/kustomize.py deploy/overlays/dev`.

Why not kustomize itself: a fresh machine gets `kubectl` only from Debian (1.20, whose embedded
kustomize predates `labels`, `replicas` and inline patches). Where a current `kubectl` is present,
tests/kubernetes/test_deploy.py checks that this renders exactly what `kubectl kustomize` does.

Supported, and nothing else (an unknown field is an error): `resources` (files and folders),
`namespace`, `labels` (`pairs`, `includeSelectors: false`, `includeTemplates`), `images`
(`name`, `newName`, `newTag`), `replicas`, `secretGenerator` (`literals`, `namespace`) with
`generatorOptions.disableNameSuffixHash: true`, and `patches` as inline JSON 6902 operations
(`add`, `replace`, `remove`) on a `target` chosen by `kind` and `name`.
"""

from __future__ import annotations

import base64
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KNOWN = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "replicas",
    "secretGenerator",
    "generatorOptions",
    "patches",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class KustomizeError(ValueError):
    pass


def build(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise KustomizeError(f"{folder}: unsupported kustomization fields {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():
            objects += build(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    objects += _secrets(spec)
    namespace = spec.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
    for label in spec.get("labels", []):
        if label.get("includeSelectors", False):
            raise KustomizeError(f"{folder}: labels with includeSelectors are not supported")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and obj["kind"] in WORKLOADS:
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(label["pairs"])
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                repository, _, _ = container["image"].partition(":")
                if repository == image["name"]:
                    container["image"] = f"{image.get('newName', repository)}:{image['newTag']}"
    for replicas in spec.get("replicas", []):
        for obj in objects:
            if obj["kind"] in WORKLOADS and obj["metadata"]["name"] == replicas["name"]:
                obj["spec"]["replicas"] = replicas["count"]
    for patch in spec.get("patches", []):
        target = patch["target"]
        for obj in objects:
            if obj["kind"] == target.get("kind", obj["kind"]) and obj["metadata"]["name"] == target.get(
                "name", obj["metadata"]["name"]
            ):
                for operation in yaml.safe_load(patch["patch"]):
                    _apply(obj, operation)
    return objects


def _secrets(spec: dict[str, Any]) -> list[dict[str, Any]]:
    generators = spec.get("secretGenerator", [])
    if generators and not spec.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise KustomizeError("secretGenerator needs generatorOptions.disableNameSuffixHash: true here")
    secrets = []
    for generator in generators:
        data = {}
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = base64.b64encode(value.encode()).decode()
        metadata = {"name": generator["name"]}
        if "namespace" in generator:
            metadata["namespace"] = generator["namespace"]
        secrets.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata, "data": data})
    return secrets


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] not in WORKLOADS:
        return []
    pod = obj["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _apply(obj: dict[str, Any], operation: dict[str, Any]) -> None:
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in operation["path"].lstrip("/").split("/")]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    op = operation["op"]
    if op == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif op in ("add", "replace"):
        value = copy.deepcopy(operation["value"])
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif op == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            if op == "replace" and last not in node:
                raise KustomizeError(f"replace of a missing path {operation['path']}")
            node[last] = value
    else:
        raise KustomizeError(f"unsupported patch operation {op}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python deploy/kustomize.py FOLDER", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(build(Path(argv[0])), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
