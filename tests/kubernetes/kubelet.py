"""A fake kubelet for the API server stand-in: it runs the runner of every pod bound to its nodes.

For each pod bound to one of its (Ready) nodes it does what a kubelet does, over the API:
mounts the pod's Secret (writes runner.json, with the job directory mapped to a folder of the
test), starts the container's command (`python -m dlaas.runner`, this interpreter), reports
the pod Running, serves the containers' logs (the runner's output, and the training log for the
log sidecar), and reports Succeeded or Failed with the exit code when the runner exits. A pod
marked for deletion gets SIGTERM, and is deleted with grace 0 once its runner has exited. A lost
node's runners die with it and nothing more is reported for them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from services.scheduler.adapters.kubernetes_manifests import JOB_DIR, LOG_CONTAINER, RUNNER_CONTAINER
from tests.kubernetes.apiserver import ApiServer, LogSource


def container_status(container: dict[str, Any], state: dict[str, Any], *, ready: bool) -> dict[str, Any]:
    """A container's status as a kubelet reports it (the client checks the required fields)."""
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": f"docker-pullable://{container['image']}@sha256:{'0' * 64}",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


@dataclass
class Container:
    pod: str
    namespace: str
    node: str
    process: subprocess.Popen[bytes]
    job_dir: Path
    terminated: bool = False
    done: bool = False


class FakeKubelet:
    def __init__(self, api: ApiServer, root: Path, nodes: set[str]):
        self.api = api
        self.root = root
        self.nodes = set(nodes)
        self.lost: set[str] = set()
        self.core: Any = client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url)))
        self.containers: dict[str, Container] = {}
        self.started: list[tuple[str, str, int]] = []  # (pod, node, GPUs requested): what ran where
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)

    def __enter__(self) -> FakeKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for container in self.containers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                container.process.wait(5)

    def lose_node(self, name: str) -> None:
        """The node dies: its runners with it; the API server sees it NotReady."""
        self.lost.add(name)
        for container in self.containers.values():
            if container.node == name and not container.done:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.pid, signal.SIGKILL)
                container.done = True

        def not_ready() -> Any:
            return self.api.update(
                ("nodes", None, name),
                lambda o: o["status"].__setitem__("conditions", [{"type": "Ready", "status": "False"}]),
            )

        self.api.call(not_ready)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._sync()
            except Exception as exc:  # a kubelet keeps going
                print(f"fake kubelet: {exc!r}", file=sys.stderr)

    def _sync(self) -> None:
        pods = json.loads(self.core.list_pod_for_all_namespaces(_preload_content=False).data)["items"]
        present = {p["metadata"]["name"] for p in pods}
        for pod in pods:
            name = pod["metadata"]["name"]
            node = pod["spec"].get("nodeName")
            if node not in self.nodes or node in self.lost:
                continue
            container = self.containers.get(name)
            if container is None:
                if (pod.get("status") or {}).get("phase") == "Pending" and not pod["metadata"].get("deletionTimestamp"):
                    self._start(pod)
                continue
            if container.done:
                if pod["metadata"].get("deletionTimestamp"):  # its containers are gone already
                    self.core.delete_namespaced_pod(
                        name, container.namespace, grace_period_seconds=0, _preload_content=False
                    )
                continue
            if pod["metadata"].get("deletionTimestamp") and not container.terminated:
                container.terminated = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(container.process.pid, signal.SIGTERM)
            code = container.process.poll()
            if code is not None:
                container.done = True
                if pod["metadata"].get("deletionTimestamp"):
                    self.core.delete_namespaced_pod(
                        name, container.namespace, grace_period_seconds=0, _preload_content=False
                    )
                else:
                    self._report(pod, "Succeeded" if code == 0 else "Failed", code)
        for name, container in self.containers.items():
            if name not in present and not container.done:  # deleted with grace 0: killed
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.pid, signal.SIGKILL)
                container.done = True

    def _start(self, pod: dict[str, Any]) -> None:
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        secret_name = next(v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v)
        secret = json.loads(self.core.read_namespaced_secret(secret_name, namespace, _preload_content=False).data)
        config = json.loads(base64.b64decode(secret["data"]["runner.json"]))
        pod_dir = self.root / name
        job_dir = pod_dir / "job"
        job_dir.mkdir(parents=True, exist_ok=True)
        assert config["job_dir"] == JOB_DIR, config["job_dir"]
        config["job_dir"] = str(job_dir)  # the emptyDir, as this kubelet mounts it
        (pod_dir / "runner.json").write_text(json.dumps(config))
        runner = next(c for c in pod["spec"]["containers"] if c["name"] == RUNNER_CONTAINER)
        assert runner["command"][:3] == ["python", "-m", "dlaas.runner"], runner["command"]
        gpus = int(runner["resources"]["limits"].get("nvidia.com/gpu", "0"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
        env.update({e["name"]: e["value"] for e in runner.get("env", [])})
        env["HOME"] = str(pod_dir)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])  # the image's
        with open(pod_dir / "runner.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "dlaas.runner", str(pod_dir / "runner.json")],
                stdout=out,
                stderr=out,
                cwd=pod_dir,
                env=env,
                start_new_session=True,
            )
        container = Container(name, namespace, pod["spec"]["nodeName"], process, job_dir)
        self.containers[name] = container
        self.started.append((name, container.node, gpus))

        def running() -> bool:
            return not container.done

        self.api.logs[(namespace, name, RUNNER_CONTAINER)] = LogSource(pod_dir / "runner.log", running)
        self.api.logs[(namespace, name, LOG_CONTAINER)] = LogSource(job_dir / "training.log", running)
        status = {"phase": "Running", "containerStatuses": [container_status(runner, {"running": {}}, ready=True)]}
        self.core.replace_namespaced_pod_status(
            name,
            namespace,
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "status": status},
            _preload_content=False,
        )

    def _report(self, pod: dict[str, Any], phase: str, code: int) -> None:
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        runner = next(c for c in pod["spec"]["containers"] if c["name"] == RUNNER_CONTAINER)
        status = {
            "phase": phase,
            "containerStatuses": [container_status(runner, {"terminated": {"exitCode": code}}, ready=False)],
        }
        self.core.replace_namespaced_pod_status(
            name,
            namespace,
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "status": status},
            _preload_content=False,
        )
