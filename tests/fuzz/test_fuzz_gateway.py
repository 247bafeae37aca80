"""Fuzzing the public API through the real gateway: bad input is INVALID_ARGUMENT with field
violations (or NOT_FOUND), never INTERNAL or UNKNOWN, never a crash, never a stored run."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlaas.credentials import bearer, with_headers
from dlaas.gateway.v1 import cluster_pb2, cluster_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from dlaas.types.v1 import run_pb2
from tests.conftest import DatabaseFactory
from tests.support import ADMIN_KEY, Platform, start_platform

pytestmark = pytest.mark.fuzz

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
EXAMPLES = 2500  # per test; four tests make 10,000 generated requests
ADMIN: list[grpc.Channel] = []  # a channel with the admin key, while the module's platform runs


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    """The whole platform on an event loop of its own thread, so that hypothesis can call it synchronously."""
    root = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        ready["platform"] = loop.run_until_complete(start_platform(DatabaseFactory("sqlite", root, None), root))
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    while "platform" not in ready:
        thread.join(0.05)
    platform: Platform = ready["platform"]
    channel = with_headers(grpc.insecure_channel(platform.gateway.address), bearer(platform.key))
    ADMIN.append(with_headers(grpc.insecure_channel(platform.gateway.address), bearer(ADMIN_KEY)))
    yield channel
    channel.close()
    ADMIN.pop().close()
    asyncio.run_coroutine_threadsafe(platform.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    found: list[str] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [v.field for v in bad.field_violations]
    return found


def runs_stored(channel: grpc.Channel) -> int:
    return len(gateway_pb2_grpc.TrainingServiceStub(channel).ListRuns(gateway_pb2.ListRunsRequest(page_size=1000)).runs)


# ---- manifests ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.sampled_from(["../../etc/passwd", "/abs/path", "a\\b", "x\x00y", "ÿ" * 300, "💥", "-1", "1e400", "9" * 5000]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "name",
        "framework",
        "command",
        "resources",
        "data",
        "results",
        "environment",
        "max_runtime",
        "priority",
        "gpus",
        "learners",
        "data_stores",
        "model_definition",
        "training_data_reference",
        "memory",
        "cpus",
    ]
)
documents = st.dictionaries(keys, values, max_size=8)
valid_base = {"name": "fuzz", "framework": {"name": "python"}, "command": "true", "resources": {"gpus": 0}}
mutations = st.dictionaries(keys, values, max_size=3).map(lambda changes: {**valid_base, **changes})
bombs = st.sampled_from(
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n",
        "x: " + "[" * 500 + "]" * 500,
        "x: !!python/object/apply:os.system ['true']\n",
        "name: a\nname: b\ncommand: c\nframework: python\n",
        "\ufeff" + "name: x\n" * 2,
        "a" * (70 * 1024),
    ]
)
texts = st.one_of(
    documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    mutations.map(lambda d: json.dumps(d, default=str)),
    bombs,
    st.text(max_size=300),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=texts, validate_only=st.booleans())
def test_generated_manifests_are_accepted_or_refused_cleanly(
    gateway: grpc.Channel, text: str, validate_only: bool
) -> None:
    stub = gateway_pb2_grpc.TrainingServiceStub(gateway)
    before = runs_stored(gateway)
    try:
        run = stub.CreateRun(gateway_pb2.CreateRunRequest(manifest=text, validate_only=validate_only), timeout=30)
    except grpc.RpcError as error:
        code = error.code()
        assert code not in NEVER, (code, error.details(), text[:300])
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert violations(error), text[:300]
        assert runs_stored(gateway) == before, "a refused submission left a run behind"
        return
    if validate_only:
        assert not run.name and runs_stored(gateway) == before
    else:
        assert run.status.state == run_pb2.RUN_STATE_QUEUED
        stub.CancelRun(gateway_pb2.CancelRunRequest(name=run.name), timeout=30)


# ---- RPC messages ------------------------------------------------------------------------------

names = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        ["accounts/default/runs/", "accounts/other/runs/run-1", "accounts//runs/x", "../x", "run-" + "a" * 70]
    ),
    st.builds(lambda s: f"accounts/default/runs/{s}", st.text(max_size=40)),
)
tokens = st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.hex()), st.just("eyJvIjogLTF9"))
locations = st.builds(
    run_pb2.ObjectLocation,
    connection=st.one_of(st.just(""), st.text(max_size=20)),
    bucket=st.one_of(st.text(max_size=70), st.sampled_from(["ok-bucket", "..", "a", "UPPER", "x" * 64])),
    prefix=st.one_of(
        st.text(max_size=40), st.sampled_from(["../../secret", "/etc", "a/../../b", "a\x00b", "ok/prefix"])
    ),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names, token=tokens, size=st.integers(-(2**31), 2**31 - 1))
def test_generated_run_requests_never_fail_inside(gateway: grpc.Channel, name: str, token: str, size: int) -> None:
    stub = gateway_pb2_grpc.TrainingServiceStub(gateway)
    calls: list[Callable[[], object]] = [
        lambda: stub.GetRun(gateway_pb2.GetRunRequest(name=name), timeout=30),
        lambda: stub.CancelRun(gateway_pb2.CancelRunRequest(name=name), timeout=30),
        lambda: stub.ListRuns(gateway_pb2.ListRunsRequest(page_size=size, page_token=token), timeout=30),
        lambda: stub.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=name), timeout=30),
        lambda: stub.ListUsageRecords(
            gateway_pb2.ListUsageRecordsRequest(run=name, page_size=size, page_token=token), timeout=30
        ),
        lambda: list(stub.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name), timeout=30)),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            assert error.code() not in NEVER, (error.code(), error.details(), name, token, size)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(location=locations, mode=st.integers(-5, 5), size=st.integers(-100, 10**6), token=tokens)
def test_generated_data_requests_never_fail_inside(
    gateway: grpc.Channel, location: run_pb2.ObjectLocation, mode: int, size: int, token: str
) -> None:
    stub = gateway_pb2_grpc.TrainingServiceStub(gateway)
    calls: list[Callable[[], object]] = [
        lambda: stub.CreateDataGrant(gateway_pb2.CreateDataGrantRequest(location=location, mode=mode), timeout=30),  # type: ignore[arg-type]
        lambda: stub.ListObjects(
            gateway_pb2.ListObjectsRequest(location=location, page_size=size, page_token=token), timeout=30
        ),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            assert error.code() not in NEVER, (error.code(), error.details(), location, mode)
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert violations(error)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(account=st.text(max_size=80), tier=st.text(max_size=20), node=st.text(max_size=40), token=tokens)
def test_generated_cluster_requests_never_fail_inside(
    gateway: grpc.Channel, account: str, tier: str, node: str, token: str
) -> None:
    cluster = cluster_pb2_grpc.ClusterServiceStub(gateway)
    admin = cluster_pb2_grpc.AdminServiceStub(ADMIN[0])
    calls: list[Callable[[], object]] = [
        lambda: cluster.ListQueue(cluster_pb2.ListQueueRequest(parent=account, page_token=token), timeout=30),
        lambda: admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account=account, tier=tier), timeout=30),
        lambda: admin.DrainNode(cluster_pb2.DrainNodeRequest(name=node), timeout=30),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            assert error.code() not in NEVER, (error.code(), error.details(), account, tier, node)
