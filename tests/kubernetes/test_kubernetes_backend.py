"""The kubernetes backend end to end: the real services, our scheduler binding pods in the API stand-in.

3 nodes × 4 GPUs of 2 types (two H100 nodes, one A100 node). A fake kubelet runs each bound
pod's runner (the real `python -m dlaas.runner`), which reports to the real scheduler. What is
shown here is shown against the stand-in (tests/kubernetes/apiserver.py), not a real cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernetes import client

from dlaas.gateway.v1 import cluster_pb2, cluster_pb2_grpc, gateway_pb2
from dlaas.intervals import attempt_intervals
from dlaas.types.v1 import run_pb2
from services.scheduler.adapters.kubernetes_manifests import learners_service_manifest
from services.scheduler.app import build_server as build_scheduler
from services.scheduler.settings import SchedulerSettings, Tier
from tests.conftest import DatabaseFactory
from tests.kubernetes.apiserver import ApiServer, node_object
from tests.kubernetes.kubelet import FakeKubelet
from tests.support import (
    TERMINAL,
    Platform,
    closed_usage_records,
    read_logs,
    settle_tasks,
    start_platform,
    submit,
    wait_for,
)

pytestmark = pytest.mark.e2e

NAMESPACE = "dlaas-runs"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"
NODES = {"h100-a": H100, "h100-b": H100, "a100-a": A100}
RUNNER = "registry.example/dlaas/runner:1.0"
RUNNER_PY312 = "registry.example/dlaas/runner-py312:1.0"
IMAGES = {"python": RUNNER, "python:3.12": RUNNER_PY312, "pytorch:2.13": "registry.example/dlaas/runner-pytorch:2.13"}
TIERS = {
    "free": Tier(max_gpus=1, max_queued_runs=100),
    "standard": Tier(max_gpus=16, max_queued_runs=100),
}


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        for name, product in NODES.items():
            server.call(partial(server.create, "nodes", None, node_object(name, product, 4)))
        yield server


@pytest.fixture
def kubelet(api: ApiServer, tmp_path: Path) -> Iterator[FakeKubelet]:
    with FakeKubelet(api, tmp_path / "kubelet", set(NODES)) as fake:
        yield fake


async def _platform(
    sqlite_databases: DatabaseFactory, tmp_path: Path, api: ApiServer, tier: str
) -> AsyncIterator[Platform]:
    platform = await start_platform(
        sqlite_databases,
        tmp_path,
        tiers=dict(TIERS),
        scheduler_settings={
            "backend": "kubernetes",
            "kubernetes_api_url": api.url,
            "kubernetes_namespace": NAMESPACE,
            "kubernetes_images": dict(IMAGES),
            "kubernetes_termination_grace_s": 30,
        },
    )
    if tier != "free":
        platform.channel = await platform.account_channel("team", tier)
    yield platform
    await platform.stop()
    await settle_tasks()  # CI once hung here, in the loop's own teardown: name what does not end


@pytest.fixture
async def standard(
    sqlite_databases: DatabaseFactory, tmp_path: Path, api: ApiServer, kubelet: FakeKubelet
) -> AsyncIterator[Platform]:
    async for platform in _platform(sqlite_databases, tmp_path, api, "standard"):
        yield platform


@pytest.fixture
async def free(
    sqlite_databases: DatabaseFactory, tmp_path: Path, api: ApiServer, kubelet: FakeKubelet
) -> AsyncIterator[Platform]:
    async for platform in _platform(sqlite_databases, tmp_path, api, "free"):
        yield platform


def manifest(
    command: str, *, gpus: int, gpu_type: str = "", learners: int = 1, framework: str = "{name: python}"
) -> str:
    wanted = f", gpu_type: {gpu_type}" if gpu_type else ""
    return textwrap.dedent(
        f"""\
        name: k8s
        framework: {framework}
        command: {json.dumps(command)}
        resources: {{gpus: {gpus}, learners: {learners}, cpus: 2, memory: 4GiB{wanted}}}
        results: {{bucket: results}}
        """
    )


def pods_of(api: ApiServer, run: str) -> list[dict[str, Any]]:
    return [p for p in api.of("pods") if p["metadata"]["annotations"]["dlaas.io/run"] == run]


def run_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def of_run(objects: list[dict[str, Any]], run: str, attempt: int | None = None) -> list[dict[str, Any]]:
    """The objects (pods, Secrets) labelled with the run's id, and of one attempt if given."""
    labels = [o["metadata"].get("labels") or {} for o in objects]
    return [
        o
        for o, label in zip(objects, labels, strict=True)
        if label.get("dlaas.io/run-id") == run_id(run)
        and (attempt is None or label.get("dlaas.io/attempt") == str(attempt))
    ]


def no_secrets_of(api: ApiServer, run: str, attempt: int | None = None) -> bool:
    return of_run(api.of("secrets"), run, attempt) == []


def runner_json(secret: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(base64.b64decode(secret["data"]["runner.json"]))
    return config


def gated(gate: Path, then: str = "true") -> str:
    """A command that waits for the test to make `gate` (two minutes at most: a runner killed with
    its node leaves its command behind), then runs `then`."""
    return f"i=0; while [ ! -e {gate} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; test -e {gate} && {then}"


async def until_run(stub: Any, name: str, condition: Callable[[gateway_pb2.Run], bool], timeout: float = 60) -> None:
    """Polls the run until `condition` holds (its state as the scheduler records it, not a timing)."""
    async with asyncio.timeout(timeout):
        while not condition(await stub.GetRun(gateway_pb2.GetRunRequest(name=name))):
            await asyncio.sleep(0.05)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, error
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def validate_strictly(obj: dict[str, Any]) -> None:
    """The wire form against the real OpenAPI schema, unknown fields refused."""
    wire = {k: v for k, v in obj.items() if k not in ("_plural", "status")}
    kubernetes_validate.validate(wire, "1.32", strict=True)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Waits for something the fake kubelet does in its own time (not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def assert_terminal_once(run: gateway_pb2.Run) -> None:
    ends = [t for t in run.status.transitions if t.state in TERMINAL]
    assert len(ends) == 1, [run_pb2.RunState.Name(t.state) for t in run.status.transitions]


async def test_runs_are_bound_to_nodes_of_their_gpu_type_with_their_gpu_count(
    standard: Platform, api: ApiServer, kubelet: FakeKubelet
) -> None:
    on_a100 = await submit(standard.client, manifest("echo trained on $GPU_COUNT GPUs", gpus=3, gpu_type="a100"))
    on_h100 = await submit(standard.client, manifest("echo hello from h100", gpus=2, gpu_type="h100"))
    for run in (on_a100, on_h100):
        done = await wait_for(standard.client, run.name)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
        assert_terminal_once(done)

    [a100_pod] = pods_of(api, on_a100.name)
    assert a100_pod["spec"]["nodeName"] == "a100-a"
    assert a100_pod["spec"]["schedulerName"] == "dlaas-scheduler"
    assert a100_pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": A100}
    resources = a100_pod["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "3"
    assert resources["requests"]["cpu"] == "2000m" and resources["limits"]["memory"] == "4096Mi"
    assert a100_pod["spec"]["containers"][0]["image"] == RUNNER
    [h100_pod] = pods_of(api, on_h100.name)
    assert h100_pod["spec"]["nodeName"] in ("h100-a", "h100-b")
    assert ("a100-a", 3) in {(node, gpus) for _, node, gpus in kubelet.started}

    # The run's token is in the Secret its pod owns (as created: it is deleted once the pod ended),
    # and in no other object the API server was given: not in a pod's env, args or annotations.
    [secret] = [
        s for s in api.created if s["kind"] == "Secret" and s["metadata"]["name"] == a100_pod["metadata"]["name"]
    ]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == a100_pod["metadata"]["uid"]
    token = runner_json(secret)["run_token"]
    assert len(token) >= 32
    holders = [o for o in [*api.created, *api.of("pods")] if token in json.dumps(o)]
    assert holders == [], [f"{o['kind']}/{o['metadata']['name']}" for o in holders]
    assert [o for o in api.created if o["kind"] == "Secret" and token in json.dumps(runner_json(o))] == [secret]
    for obj in (a100_pod, h100_pod, secret):
        validate_strictly(obj)

    # Once a run's pod has ended its Secret is deleted; the pod stays, and with it the run's log.
    for run in (on_a100, on_h100):
        await until(partial(no_secrets_of, api, run.name))
        assert [p["status"]["phase"] for p in pods_of(api, run.name)] == ["Succeeded"]
    assert "trained on 3 GPUs" in await read_logs(standard.client, on_a100.name)
    assert "hello from h100" in await read_logs(standard.client, on_h100.name)


async def test_a_two_learner_gang_is_bound_all_at_once_or_not_at_all(
    standard: Platform, api: ApiServer, kubelet: FakeKubelet
) -> None:
    # The first try to bind the gang's second pod fails: the attempt is undone, the run queued again.
    handler: Any = api.handler
    handler["post", re.compile(r"/api/v1/namespaces/[^/]+/pods/[^/]+-a1-1/binding")][:1] << 500
    # Attempt 1's bindings are answered only once both have arrived (or after 10 s): bindings sent
    # one after another would show here as the first answered before the second was sent.
    api.hold_bindings(r"-a1-\d+$", 2)
    gang = await submit(
        standard.client,
        manifest("echo learner $LEARNER_ID of $NUM_LEARNERS rank $RANK at $MASTER_ADDR; sleep 2", gpus=4, learners=2),
    )
    await wait_for(standard.client, gang.name, {run_pb2.RUN_STATE_RUNNING})
    await until(lambda: len([p for p in pods_of(api, gang.name) if p["spec"].get("nodeName")]) == 2)
    pods = pods_of(api, gang.name)  # while the gang runs (once its first learner ends, the others are deleted)
    done = await wait_for(standard.client, gang.name)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
    assert_terminal_once(done)
    assert done.status.attempt == 2
    rid = run_id(gang.name)
    # Both bindings of attempt 1 were sent before either was answered: Kubernetes binds one pod per
    # call, and the backend sends a gang's together.
    answered = dict(api.bindings_answered)
    assert {f"{rid}-a1-0", f"{rid}-a1-1"} <= set(answered[f"{rid}-a1-0"]), api.bindings_answered

    # Billed for every learner's GPUs, each attempt once; the undone attempt exactly from its
    # assignment to its undoing (the scheduler's transitions), nothing after.
    records = {r.attempt: r for r in await closed_usage_records(standard.client, done)}
    intervals = attempt_intervals(done)
    assert sorted(records) == [1, 2]
    for attempt, record in records.items():
        start, end = intervals[attempt]
        assert end is not None
        assert (record.gpus, record.start_time.ToMilliseconds(), record.end_time.ToMilliseconds()) == (8, start, end)
        assert record.gpu_milliseconds == 8 * (end - start)
    assert records[1].end_time.ToMilliseconds() <= records[2].start_time.ToMilliseconds()

    # Nothing of the failed attempt is left: no pod, no Secret, no runner (one may have started on
    # the pod that was bound before its partner's binding failed: it was killed with its pod).
    assert {p["metadata"]["labels"]["dlaas.io/attempt"] for p in pods} == {"2"}
    assert of_run(api.of("pods"), gang.name, 1) == [] and no_secrets_of(api, gang.name, 1)
    await until(lambda: all(c.done for name, c in kubelet.containers.items() if name.startswith(f"{rid}-a1-")))
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["h100-a", "h100-b"]
    # Every learner is under the runs' headless Service (deployed with the platform): DNS names for the gang.
    learners = learners_service_manifest(NAMESPACE)
    assert {p["spec"]["subdomain"] for p in pods} == {learners["metadata"]["name"]}
    assert all(learners["spec"]["selector"].items() <= p["metadata"]["labels"].items() for p in pods)
    assert api.of("services") == []  # the scheduler makes none (its Role has no rights on Services)
    for obj in pods:
        validate_strictly(obj)
    started = [(pod, node, gpus) for pod, node, gpus in kubelet.started if pod.startswith(run_id(gang.name))]
    assert {node for _, node, _ in started} == {"h100-a", "h100-b"} and {g for _, _, g in started} == {4}
    log = await read_logs(standard.client, gang.name)
    assert f"learner 1 of 2 rank 0 at {run_id(gang.name)}-a2-0.dlaas-learners.{NAMESPACE}.svc" in log


async def test_a_free_accounts_second_run_stays_queued(free: Platform, api: ApiServer) -> None:
    sleep = manifest("sleep 2", gpus=1)
    first = await submit(free.client, sleep)
    second = await submit(free.client, sleep)
    await wait_for(free.client, first.name, {run_pb2.RUN_STATE_RUNNING})
    queued = await free.client.GetRun(gateway_pb2.GetRunRequest(name=second.name))
    assert queued.status.state == run_pb2.RUN_STATE_QUEUED
    assert pods_of(api, second.name) == []
    for run in (first, second):
        done = await wait_for(free.client, run.name)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
        assert_terminal_once(done)


async def test_a_watch_expiring_with_410_gone_loses_no_run(standard: Platform, api: ApiServer) -> None:
    runs = [await submit(standard.client, manifest("sleep 1", gpus=1)) for _ in range(3)]
    await wait_for(standard.client, runs[0].name, {run_pb2.RUN_STATE_RUNNING})
    lists = api.lists
    api.compact()  # a watch resuming from before this is told 410 Gone: the backend must list again
    try:
        await until(lambda: api.gone_sent >= 1 and api.lists > lists)
    except TimeoutError:
        raise AssertionError(f"no list after 410 Gone: gone_sent={api.gone_sent} lists={api.lists}") from None
    gone = api.gone_sent
    await asyncio.sleep(1.0)
    assert api.gone_sent == gone, "a watch keeps resuming from an expired version instead of listing again"
    for run in runs:
        done = await wait_for(standard.client, run.name)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
        assert_terminal_once(done)


async def test_a_node_going_not_ready_under_a_run_requeues_it(
    standard: Platform, api: ApiServer, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    run = await submit(standard.client, manifest("sleep 30", gpus=4, gpu_type="a100"))
    await wait_for(standard.client, run.name, {run_pb2.RUN_STATE_RUNNING})
    # The victim cannot finish before the test lets it: only its second attempt is let through.
    gate = tmp_path / "second-attempt-may-finish"
    victim = await submit(standard.client, manifest(gated(gate), gpus=4, gpu_type="h100"))
    await wait_for(standard.client, victim.name, {run_pb2.RUN_STATE_RUNNING})
    [pod] = pods_of(api, victim.name)
    kubelet.lose_node(pod["spec"]["nodeName"])
    await until_run(
        standard.client, victim.name, lambda r: r.status.attempt == 2 and r.status.state == run_pb2.RUN_STATE_RUNNING
    )
    # The lost attempt's Secret is gone (its token must not outlive it).
    await until(partial(no_secrets_of, api, victim.name, 1))
    gate.touch()
    done = await wait_for(standard.client, victim.name)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
    assert done.status.attempt == 2
    assert_terminal_once(done)
    [second] = [p for p in pods_of(api, victim.name) if p["metadata"]["labels"]["dlaas.io/attempt"] == "2"]
    assert second["spec"]["nodeName"] != pod["spec"]["nodeName"]
    await standard.client.CancelRun(gateway_pb2.CancelRunRequest(name=run.name))
    cancelled = await wait_for(standard.client, run.name)
    assert cancelled.status.state == run_pb2.RUN_STATE_CANCELLED
    assert_terminal_once(cancelled)
    await until(lambda: pods_of(api, run.name) == [])  # cancel deleted the pod (gracefully: the runner stopped first)


async def test_a_restarted_scheduler_adopts_its_pods_by_label(
    standard: Platform, api: ApiServer, kubelet: FakeKubelet, sqlite_databases: DatabaseFactory, tmp_path: Path
) -> None:
    run = await submit(standard.client, manifest("sleep 3; echo survived", gpus=2))
    await wait_for(standard.client, run.name, {run_pb2.RUN_STATE_RUNNING})
    port = standard.scheduler.port
    await standard.scheduler.stop(0)
    standard.scheduler = await build_scheduler(
        SchedulerSettings(
            database_url=sqlite_databases.url("scheduler"),
            port=port,
            storage_address=standard.storage.address,
            metering_address=standard.metering.address,
            tiers=dict(TIERS),
            backend="kubernetes",
            kubernetes_api_url=api.url,
            kubernetes_namespace=NAMESPACE,
            kubernetes_images=dict(IMAGES),
        )
    )
    await standard.scheduler.start()
    done = await wait_for(standard.client, run.name)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
    assert done.status.attempt == 1  # adopted, not started again
    assert_terminal_once(done)
    assert len(pods_of(api, run.name)) == 1
    assert "survived" in await read_logs(standard.client, run.name)


async def test_a_cordoned_node_takes_no_new_run_but_keeps_its_running_one(standard: Platform, api: ApiServer) -> None:
    running = await submit(standard.client, manifest("sleep 2", gpus=4, gpu_type="a100"))
    await wait_for(standard.client, running.name, {run_pb2.RUN_STATE_RUNNING})
    api.call(
        partial(api.update, ("nodes", None, "a100-a"), lambda node: node["spec"].__setitem__("unschedulable", True))
    )
    done = await wait_for(standard.client, running.name)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED and done.status.attempt == 1, done.status.message
    assert_terminal_once(done)
    cluster = cluster_pb2_grpc.ClusterServiceStub(standard.admin)
    for _ in range(600):  # `dlaas nodes` stops listing it once the scheduler has seen the cordon
        nodes = await cluster.ListNodes(cluster_pb2.ListNodesRequest())
        if "a100-a" not in {n.name for n in nodes.nodes}:
            break
        await asyncio.sleep(0.05)
    assert {n.name for n in nodes.nodes} == {"h100-a", "h100-b"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # no schedulable A100 node is left
        await submit(standard.client, manifest("true", gpus=1, gpu_type="a100"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_gang_losing_a_learners_pod_ends_the_attempt_and_runs_again(standard: Platform, api: ApiServer) -> None:
    gang = await submit(standard.client, manifest("sleep 3", gpus=2, learners=2, gpu_type="h100"))
    await wait_for(standard.client, gang.name, {run_pb2.RUN_STATE_RUNNING})
    core: Any = client.CoreV1Api(client.ApiClient(client.Configuration(host=api.url)))
    core.delete_namespaced_pod(f"{run_id(gang.name)}-a1-1", NAMESPACE, grace_period_seconds=0, _preload_content=False)
    done = await wait_for(standard.client, gang.name)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
    assert done.status.attempt == 2
    assert_terminal_once(done)
    await until(lambda: all(p["metadata"]["labels"]["dlaas.io/attempt"] == "2" for p in pods_of(api, gang.name)))


async def test_following_a_runs_log_shows_lines_while_it_runs_and_ends_when_it_ends(
    standard: Platform, tmp_path: Path
) -> None:
    gate = tmp_path / "go"  # the run waits for it; the test makes it once it saw the first line live
    run = await submit(standard.client, manifest(f"echo before the gate; {gated(gate, 'echo after the gate')}", gpus=1))
    seen = b""
    states_when_seen: list[int] = []

    async def follow() -> None:
        nonlocal seen
        stream = standard.client.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=run.name, follow=True))
        async for chunk in stream:
            seen += chunk.data
            if b"before the gate" in seen and not gate.exists():
                live = await standard.client.GetRun(gateway_pb2.GetRunRequest(name=run.name))
                states_when_seen.append(live.status.state)
                gate.touch()

    await asyncio.wait_for(follow(), 60)  # the stream ends by itself
    # A line came while the run ran (the runner starts the command, then reports RUNNING: the
    # state may still say DOWNLOADING then; it cannot be an end).
    assert len(states_when_seen) == 1 and states_when_seen[0] not in TERMINAL, states_when_seen
    assert b"after the gate" in seen, seen  # and what came after, on the same stream
    ended = await standard.client.GetRun(gateway_pb2.GetRunRequest(name=run.name))
    assert ended.status.state == run_pb2.RUN_STATE_COMPLETED, ended.status.message  # it ended with the run
    assert seen.decode() == await read_logs(standard.client, run.name)  # nothing twice, nothing lost


async def test_a_versioned_image_wins_and_a_framework_without_an_image_is_refused(
    standard: Platform, api: ApiServer
) -> None:
    on_312 = await submit(standard.client, manifest("true", gpus=1, framework="{name: python, version: '3.12'}"))
    on_311 = await submit(standard.client, manifest("true", gpus=1, framework="{name: python, version: '3.11'}"))
    for run in (on_312, on_311):
        done = await wait_for(standard.client, run.name)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
    images = {
        run.name: {c["image"] for p in pods_of(api, run.name) for c in p["spec"]["containers"]}
        for run in (on_312, on_311)
    }
    assert images == {on_312.name: {RUNNER_PY312}, on_311.name: {RUNNER}}

    # pytorch is offered (the gateway takes it) but only 2.13 has a runner image here.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(standard.client, manifest("true", gpus=1, framework="{name: pytorch, version: '2.0'}"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "FRAMEWORK_IMAGE_MISSING"
    assert (refused.value.details() or "").startswith("framework.version: "), refused.value.details()
    listed = await standard.client.ListRuns(gateway_pb2.ListRunsRequest())
    assert {r.name for r in listed.runs} == {on_312.name, on_311.name}  # nothing of the refused one stored
