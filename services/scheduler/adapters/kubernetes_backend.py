"""The kubernetes backend: each learner of a run is a pod that our scheduler places and binds.

The scheduler's placement (pure, in domain/) picks the nodes; this adapter creates the pods with
`schedulerName` set to ours, so that no other scheduler touches them, and binds each one to its
node through the Binding subresource. Kubernetes binds one pod per call: a gang's pods are
bound concurrently, and if any binding fails every pod of the attempt is deleted (a gang never
runs with part of its learners). Pods and nodes are watched (list, then watch from its
resourceVersion; a 410 Gone lists again); what the runtime asks under its lock is answered from
that view. Logs come from the pod log API. A node that is cordoned leaves the schedulable set; one
that turns NotReady or disappears also ends the attempts on it, so that the runtime queues their
runs again. A pod that has ended loses its Secret (the run token, the grant's keys) at once; the
pod itself stays, for its log.

Every call of the official client is blocking: one-off calls go through `asyncio.to_thread`;
the two long-lived watches run in daemon threads of their own, so that closing the backend
never waits for a watch to time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dlaas.runner.config import RunnerConfig
from dlaas.runner.state import LastWord
from dlaas.types.v1 import run_pb2
from services.scheduler.adapters.backend import NodesChanged
from services.scheduler.adapters.kubernetes_manifests import (
    ATTEMPT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    JOB_DIR,
    LEARNER_LABEL,
    LEARNERS_ANNOTATION,
    LOG_CONTAINER,
    RUN_ANNOTATION,
    SELECTOR,
    Learner,
    binding_manifest,
    pod_manifest,
    pod_name,
    rendezvous_environment,
    secret_manifest,
)
from services.scheduler.adapters.nodes import gpu_type_of
from services.scheduler.domain.model import Allocation, Node

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (run name, attempt)
_T = TypeVar("_T")
_ENDED_PHASES = ("Succeeded", "Failed")
_SECRET_DELETES = 4  # at once: a restart may find many ended pods whose Secrets it must make sure of


class KubernetesError(RuntimeError):
    """The API server refused or failed a call the backend needed."""


async def _all_or_raise(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Runs the calls concurrently, lets every one finish, then raises the first failure if any."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if not isinstance(result, BaseException)]


def _json(response: Any) -> Any:
    return json.loads(response.data or b"null")


def api_client(url: str) -> Any:
    """A client of the API server at `url`; empty: the pod's service account, else the kubeconfig."""
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # the client's loaders are untyped
    if url:
        configuration = client.Configuration(host=url)
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def secret_of(pod: Mapping[str, Any]) -> str:
    """The name of the Secret the pod mounts its runner.json from."""
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if "secret" in volume:
            return str(volume["secret"]["secretName"])
    return str(pod["metadata"]["name"])


def _learners(pod: Mapping[str, Any]) -> int:
    """How many learners the pod's gang has (1 for a pod of no gang)."""
    value = str(((pod.get("metadata") or {}).get("annotations") or {}).get(LEARNERS_ANNOTATION, "1"))
    return int(value) if value.isdigit() else 1


def node_ready(obj: Mapping[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def node_from_object(obj: Mapping[str, Any]) -> tuple[Node, str] | None:
    """A node of the cluster as the scheduler sees it, with its GPU product; None if it takes no runs."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("unschedulable"):
        return None
    if not node_ready(obj):
        return None
    try:
        gpus = int(str((status.get("allocatable") or {}).get(GPU_RESOURCE, "0")))
    except ValueError:
        return None
    if gpus <= 0:
        return None
    product = str((obj["metadata"].get("labels") or {}).get(GPU_PRODUCT_LABEL, ""))
    return Node(
        name=obj["metadata"]["name"], gpu_type=gpu_type_of(product) if product else "gpu", gpu_count=gpus
    ), product


@dataclasses.dataclass(frozen=True)
class KubernetesOptions:
    namespace: str
    scheduler_name: str
    images: Mapping[str, str]  # "framework:version" or "framework" → image
    termination_grace_s: int = 300
    watch_timeout_s: int = 30


class KubernetesBackend:
    def __init__(self, api_client: Any, options: KubernetesOptions):
        from kubernetes import client  # deferred: only this backend needs the Kubernetes client

        self.options = options
        self.api: Any = client.CoreV1Api(api_client)  # used with raw responses (_preload_content=False)
        self._api_client = api_client
        self._pods: dict[str, dict[str, Any]] = {}
        self._nodes: dict[str, tuple[Node, str]] = {}  # schedulable nodes: name → (node, product)
        self._lost_nodes: set[str] = set()
        self._node_objects: dict[str, dict[str, Any]] = {}
        self._ready_nodes: set[str] = set()
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._on_nodes: NodesChanged | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._synced = False
        self._secrets_gone: set[str] = set()  # uids of ended pods whose Secret was deleted
        self._secret_deletes: asyncio.Semaphore | None = None

    # ---- what runs where -------------------------------------------------------------------

    def image_for(self, framework: str, version: str) -> str | None:
        """The image of "framework:version" if one is configured, else the framework's own."""
        images = self.options.images
        return (images.get(f"{framework}:{version}") if version else None) or images.get(framework)

    def refusal(self, spec: run_pb2.RunSpec) -> tuple[str, str] | None:
        framework = spec.framework
        if self.image_for(framework.name, framework.version) is not None:
            return None
        images = self.options.images
        # Some version of the framework has an image: the version is what is wrong.
        versioned = any(key.partition(":")[0] == framework.name for key in images)
        field = "framework.version" if versioned else "framework.name"
        known = ", ".join(sorted(images)) or "none"
        wanted = f"{framework.name} {framework.version}".rstrip()
        return (
            f"{field}: no runner image is configured for framework {wanted} (configured: {known})",
            "FRAMEWORK_IMAGE_MISSING",
        )

    def job_dir(self, run: str, attempt: int) -> Path:
        return Path(JOB_DIR)  # an emptyDir of the pod

    # ---- nodes -----------------------------------------------------------------------------

    async def list_nodes(self) -> list[Node]:
        """The schedulable GPU nodes now (allocatable nvidia.com/gpu, Ready, not cordoned)."""
        items, _ = await asyncio.to_thread(self._list, "nodes")
        self._node_objects = {obj["metadata"]["name"]: obj for obj in items}
        self._ready_nodes = {name for name, obj in self._node_objects.items() if node_ready(obj)}
        self._nodes = {n.name: (n, p) for obj in items if (found := node_from_object(obj)) for n, p in [found]}
        return [n for n, _ in self._nodes.values()]

    def watch_nodes(self, on_change: NodesChanged) -> None:
        self._bind_loop()
        self._on_nodes = on_change
        self._start_thread("nodes")

    def _apply_nodes(self, objects: list[dict[str, Any]] | None, event: dict[str, Any] | None) -> None:
        """Schedulable: Ready, not cordoned, with GPUs. Lost (their runs end): NotReady or gone.

        A cordoned node only stops taking runs; the runs on it carry on.
        """
        before = dict(self._nodes)
        if objects is not None:
            self._node_objects = {obj["metadata"]["name"]: obj for obj in objects}
        elif event is not None:
            obj = event["object"]
            if event["type"] == "DELETED":
                self._node_objects.pop(obj["metadata"]["name"], None)
            else:
                self._node_objects[obj["metadata"]["name"]] = obj
        self._nodes = {
            n.name: (n, p)
            for obj in self._node_objects.values()
            if (found := node_from_object(obj))
            for n, p in [found]
        }
        ready = {name for name, obj in self._node_objects.items() if node_ready(obj)}
        lost = (self._ready_nodes | self._lost_nodes) - ready
        self._ready_nodes = ready
        newly_lost = lost - self._lost_nodes
        if newly_lost:
            names = ", ".join(sorted(newly_lost))
            log.warning("node(s) %s NotReady or gone: the attempts running there end", names)
        self._lost_nodes = lost
        if newly_lost:
            self._delete_secrets_of_ended(
                [p for p in self._pods.values() if (p.get("spec") or {}).get("nodeName") in newly_lost]
            )
        if before != self._nodes:
            if self._on_nodes is not None:
                self._on_nodes([n for n, _ in self._nodes.values()])
            self._notify()

    # ---- pods ------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Lists the pods we manage (reconcile by label), then keeps watching them."""
        self._bind_loop()
        if self._synced:
            return
        items, _ = await asyncio.to_thread(self._list, "pods")
        self._apply_pods(items, None)
        self._synced = True
        self._start_thread("pods")

    def warm(self) -> None:
        self._bind_loop()
        if not self._synced:
            self._spawn(self.sync())

    def _key_of(self, pod: Mapping[str, Any]) -> Key | None:
        metadata = pod.get("metadata") or {}
        run = (metadata.get("annotations") or {}).get(RUN_ANNOTATION)
        attempt = (metadata.get("labels") or {}).get(ATTEMPT_LABEL)
        if not run or not attempt or not str(attempt).isdigit():
            return None
        return run, int(attempt)

    def _attempt_pods(self, run: str, attempt: int) -> list[dict[str, Any]]:
        pods = [p for p in self._pods.values() if self._key_of(p) == (run, attempt)]
        return sorted(pods, key=lambda p: int(p["metadata"]["labels"].get(LEARNER_LABEL, "0")))

    def _apply_pods(self, objects: list[dict[str, Any]] | None, event: dict[str, Any] | None) -> None:
        if objects is not None:
            self._pods = {p["metadata"]["name"]: p for p in objects}
            self._secrets_gone &= {p["metadata"].get("uid") for p in objects}
            self._delete_secrets_of_ended(objects)
        elif event is not None:
            obj = event["object"]
            name = obj["metadata"]["name"]
            if event["type"] == "DELETED":
                self._pods.pop(name, None)
                self._secrets_gone.discard(obj["metadata"].get("uid"))  # its Secret went with it (owner)
            else:
                self._pods[name] = obj
                self._delete_secrets_of_ended([obj])
        self._notify()

    def _delete_secrets_of_ended(self, pods: Sequence[Mapping[str, Any]]) -> None:
        """Deletes the Secret of each pod that has ended; the pod stays (its log is the run's log).

        The runner reads runner.json once, as it starts, and each pod mounts a Secret of its own:
        once its pod has ended (or its node was lost), nothing needs a Secret any more, and the run
        token and the grant's keys it holds should not outlive the attempt. A restarted scheduler
        sees every ended pod again and makes sure (a Secret already gone answers 404).
        """
        ended = [p for p in pods if self._pod_ended(p) and p["metadata"].get("uid") not in self._secrets_gone]
        if not ended or self._loop is None:
            return
        for pod in ended:
            self._secrets_gone.add(pod["metadata"].get("uid"))
        self._spawn(self._delete_secrets([secret_of(p) for p in ended]))

    async def _delete_secrets(self, names: Sequence[str]) -> None:
        if self._secret_deletes is None:
            self._secret_deletes = asyncio.Semaphore(_SECRET_DELETES)

        async def delete(name: str) -> None:
            assert self._secret_deletes is not None
            async with self._secret_deletes:
                try:
                    await asyncio.to_thread(self._delete_secret, name)
                except Exception as exc:  # noqa: BLE001 - the others still go; the pod's deletion takes it later
                    log.warning("could not delete Secret %s: %s", name, exc)

        await asyncio.gather(*(delete(name) for name in names))

    def _remember(self, pod: dict[str, Any]) -> None:
        current = self._pods.get(pod["metadata"]["name"])
        if current is None or int(current["metadata"].get("resourceVersion") or 0) <= int(
            pod["metadata"].get("resourceVersion") or 0
        ):
            self._pods[pod["metadata"]["name"]] = pod
        self._notify()

    def _notify(self) -> None:
        if self._changed is None:
            return
        changed = self._changed

        async def wake() -> None:
            async with changed:
                changed.notify_all()

        self._spawn(wake())

    def _pod_ended(self, pod: Mapping[str, Any]) -> bool:
        phase = (pod.get("status") or {}).get("phase")
        node = (pod.get("spec") or {}).get("nodeName")
        return phase in _ENDED_PHASES or (node is not None and node in self._lost_nodes)

    def _attempt_over(self, run: str, attempt: int) -> bool:
        """A learner's pod is gone, the first learner's pod ended, any learner failed, or a node under it was lost."""
        pods = self._attempt_pods(run, attempt)
        if not pods or len(pods) < max(_learners(p) for p in pods):
            return True
        if self._pod_ended(pods[0]):
            return True
        return any(self._pod_ended(p) and (p.get("status") or {}).get("phase") != "Succeeded" for p in pods)

    async def wait(self, run: str, attempt: int) -> None:
        assert self._changed is not None, "sync() first"
        async with self._changed:
            await self._changed.wait_for(lambda: self._attempt_over(run, attempt))
        # A gang ends as a whole: learners still running have nothing left to talk to. Ended pods
        # stay (the first learner's holds the run's log, as a finished pod does).
        if any(not self._pod_ended(p) for p in self._attempt_pods(run, attempt)):
            self._spawn(self._delete_attempt(run, attempt, grace_s=None, running_only=True))

    def started(self, run: str, attempt: int) -> bool:
        return bool(self._attempt_pods(run, attempt))

    def is_alive(self, run: str, attempt: int) -> bool:
        pods = self._attempt_pods(run, attempt)
        return (
            bool(pods)
            and all((p.get("spec") or {}).get("nodeName") for p in pods)
            and not self._attempt_over(run, attempt)
        )

    def cancel(self, run: str, attempt: int) -> bool:
        """Deletes the pods: the kubelet sends the runner SIGTERM, it stops the command and uploads.

        Pods created but not yet seen bound count too: the runner may start any moment, so the run
        ends when the pods do (as CANCELLED: the scheduler marked it), never before."""
        if not self.started(run, attempt) or self._attempt_over(run, attempt):
            return False
        self._spawn(self._delete_attempt(run, attempt, grace_s=None))
        return True

    def kill_command(self, run: str, attempt: int) -> None:
        if self.started(run, attempt):
            self._spawn(self._delete_attempt(run, attempt, grace_s=0))

    def kill_runner(self, run: str, attempt: int) -> None:
        self.kill_command(run, attempt)

    def final_state(self, run: str, attempt: int) -> LastWord | None:
        return None  # state.json lives in the pod; the runner's reports are the record

    async def start(self, launch: RunnerConfig, allocations: Sequence[Allocation], spec: run_pb2.RunSpec) -> None:
        """Creates every learner's pod and Secret, then binds them all at once; or none of it.

        Kubernetes has no binding of several pods in one call: the bindings are sent concurrently,
        and if any fails, every pod and Secret of the attempt is deleted (grace 0). A learner
        bound meanwhile may have started; it is killed with its pod, and its reports, made with
        the attempt's token, are refused once the run is queued again."""
        self._bind_loop()
        await self._delete_attempt(launch.run, launch.attempt, grace_s=0)  # leftovers of a start cut short
        learners = len(allocations)
        image = self.image_for(spec.framework.name, spec.framework.version)
        if not image:
            raise KubernetesError(f"no runner image for framework {spec.framework.name} {spec.framework.version}")
        namespace = self.options.namespace
        products = {name: product for name, (_, product) in self._nodes.items()}
        gang = [
            Learner(index, allocation.node, products.get(allocation.node, ""), len(allocation.gpu_indices))
            for index, allocation in enumerate(allocations)
        ]

        async def create(learner: Learner) -> dict[str, Any]:
            manifest = pod_manifest(
                namespace=namespace,
                run=launch.run,
                run_id=launch.run_id,
                attempt=launch.attempt,
                learner=learner,
                learners=learners,
                image=image,
                scheduler_name=self.options.scheduler_name,
                cpus=spec.resources.cpus,
                memory_mib=spec.resources.memory_mib,
                grace_s=self.options.termination_grace_s,
            )
            pod = await asyncio.to_thread(self._create, "pods", manifest)
            self._remember(pod)
            environment = dict(launch.environment)
            if learners > 1:
                environment.update(
                    rendezvous_environment(launch.run_id, launch.attempt, namespace, learners, learner.index)
                )
            config = dataclasses.replace(
                launch,
                learner_id=learner.index + 1,
                gpu_indices=tuple(range(learner.gpus)),  # the device plugin shows a pod its GPUs as 0..n-1
                environment=environment,
                python_bin_dir="",
            )
            await asyncio.to_thread(self._create, "secrets", secret_manifest(pod, config.to_dict()))
            return pod

        try:
            pods = await _all_or_raise([create(learner) for learner in gang])
            # Bound last and together: a pod is bound only once every learner's pod and Secret exist.
            await _all_or_raise(
                [asyncio.to_thread(self._bind, pod, learner.node) for pod, learner in zip(pods, gang, strict=True)]
            )
        except Exception:
            # By name, not from the watch's view: a pod whose creation timed out may exist unseen.
            names = [pod_name(launch.run_id, launch.attempt, learner.index) for learner in gang]
            await asyncio.gather(*(self._delete_pod_quietly(name, 0) for name in names))
            await self._delete_secrets(names)  # the garbage collector would too, later
            raise

    async def _delete_pod_quietly(self, name: str, grace_s: int | None) -> None:
        try:
            await asyncio.to_thread(self._delete_pod, name, grace_s)
        except Exception as exc:  # noqa: BLE001 - one pod's failure must not keep the others
            log.warning("could not delete pod %s: %s", name, exc)

    async def _delete_attempt(self, run: str, attempt: int, *, grace_s: int | None, running_only: bool = False) -> None:
        for pod in self._attempt_pods(run, attempt):
            if running_only and self._pod_ended(pod):
                continue
            await self._delete_pod_quietly(pod["metadata"]["name"], grace_s)

    # ---- logs ------------------------------------------------------------------------------

    async def read_log(
        self, run: str, attempt: int, follow: bool, is_live: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[bytes]:
        """The first learner's training log (its log sidecar), from the start; with follow, until it ends."""
        from kubernetes.client.exceptions import ApiException

        seen = 0
        while True:
            pods = self._attempt_pods(run, attempt)
            if pods:
                name = pods[0]["metadata"]["name"]
                try:
                    response = await asyncio.to_thread(self._open_log, name, follow)
                except ApiException as exc:
                    if exc.status not in (400, 404):
                        raise
                else:
                    offset = 0
                    chunks = response.stream(64 * 1024, decode_content=True)
                    try:
                        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                            new = chunk[max(0, seen - offset) :]
                            offset += len(chunk)
                            if new:
                                seen += len(new)
                                yield new
                    finally:
                        response.release_conn()
                    if not follow:
                        return
            if not follow or not await is_live():
                return
            await asyncio.sleep(0.5)

    # ---- the API, blocking (called in worker threads) ----------------------------------------

    def _list(self, what: str) -> tuple[list[dict[str, Any]], str]:
        if what == "nodes":
            response = self.api.list_node(_preload_content=False, _request_timeout=(5, 30))
        else:
            response = self.api.list_namespaced_pod(
                self.options.namespace, label_selector=SELECTOR, _preload_content=False, _request_timeout=(5, 30)
            )
        body = _json(response)
        return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _create(self, what: str, manifest: dict[str, Any]) -> dict[str, Any]:
        namespace = self.options.namespace
        create = {
            "pods": self.api.create_namespaced_pod,
            "secrets": self.api.create_namespaced_secret,
        }[what]
        return dict(_json(create(namespace, manifest, _preload_content=False, _request_timeout=(5, 30))))

    def _bind(self, pod: Mapping[str, Any], node: str) -> None:
        # The API server answers with a Status, which the client cannot read as a V1Binding
        # (kubernetes-client/python#825): the raw response is all we look at.
        name = pod["metadata"]["name"]
        self.api.create_namespaced_pod_binding(
            name,
            self.options.namespace,
            binding_manifest(pod, node),
            _preload_content=False,
            _request_timeout=(5, 30),
        )
        log.info("bound pod %s to node %s", name, node)

    def _delete_secret(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_secret(
                name, self.options.namespace, _preload_content=False, _request_timeout=(5, 30)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _delete_pod(self, name: str, grace_s: int | None) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_pod(
                name,
                self.options.namespace,
                grace_period_seconds=grace_s,
                _preload_content=False,
                _request_timeout=(5, 30),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _open_log(self, name: str, follow: bool) -> Any:
        return self.api.read_namespaced_pod_log(
            name,
            self.options.namespace,
            container=LOG_CONTAINER,
            follow=follow,
            _preload_content=False,
            _request_timeout=(5, 86_400) if follow else (5, 30),
        )

    # ---- watches (daemon threads) --------------------------------------------------------------

    def _bind_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Condition()

    def _start_thread(self, what: str) -> None:
        if any(t.name == f"kubernetes-watch-{what}" for t in self._threads):
            return
        thread = threading.Thread(
            target=self._watch_forever, args=(what,), name=f"kubernetes-watch-{what}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _post(self, what: str, objects: list[dict[str, Any]] | None, event: dict[str, Any] | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or self._closed.is_set():
            return
        apply = self._apply_nodes if what == "nodes" else self._apply_pods
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(apply, objects, event)

    def _watch_forever(self, what: str) -> None:
        """List, then watch from the list's resourceVersion; a 410 Gone (or any break) lists again."""
        from kubernetes.client.exceptions import ApiException

        version = ""
        while not self._closed.is_set():
            try:
                if not version:
                    items, version = self._list(what)
                    self._post(what, items, None)
                for raw in self._events(what, version):
                    if self._closed.is_set():
                        return
                    # The client's ERROR handling (410 Gone → ApiException) needs its own parsing
                    # (`deserialize` on); we keep working with the object as the server sent it.
                    event: dict[str, Any] = {"type": raw.get("type"), "object": raw.get("raw_object") or {}}
                    if event.get("type") == "BOOKMARK":
                        version = str(event["object"]["metadata"].get("resourceVersion") or version)
                        continue
                    version = str(event["object"]["metadata"].get("resourceVersion") or version)
                    self._post(what, None, event)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("the %s watch expired (410 Gone): listing again", what)
                else:
                    log.warning("the %s watch failed (%s): listing again", what, exc.status)
                    self._closed.wait(1.0)
                version = ""
            except Exception as exc:  # noqa: BLE001 - a broken stream: resume from the last version
                if self._closed.is_set():
                    return
                log.debug("the %s watch broke (%s): resuming", what, exc.__class__.__name__)
                self._closed.wait(0.2)

    def _events(self, what: str, version: str) -> Iterator[dict[str, Any]]:
        from kubernetes import watch

        stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
        timeout = self.options.watch_timeout_s
        common: dict[str, Any] = {
            "resource_version": version,
            "timeout_seconds": timeout,  # also turns off the client's own (wrong) retry on 410
            "allow_watch_bookmarks": True,
            "_request_timeout": (5, timeout + 5),
        }
        if what == "nodes":
            yield from stream.stream(self.api.list_node, **common)
        else:
            yield from stream.stream(
                self.api.list_namespaced_pod, self.options.namespace, label_selector=SELECTOR, **common
            )

    # ---- lifetime ------------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stops watching; the pods run on (they outlive the scheduler, which adopts them on start)."""
        self._closed.set()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        deadline = time.monotonic() + 1
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
