"""Tenant isolation: account B, with a valid key of its own, aims every public RPC at account A's
runs, experiments, connections, keys, data and usage. Each answer is NOT_FOUND (no existence
leak) or PERMISSION_DENIED (admin methods), and A's resources are the same afterwards.

The matrix must name every method of every public service: a new RPC without a row fails
`test_the_matrix_covers_every_public_method`.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool

from dlaas.gateway.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    connections_pb2,
    connections_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.types.v1 import run_pb2
from services.api_gateway.app import SERVICE_NAMES
from tests.support import Platform, manifest, pack, results_dir, submit, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.isolation]

DENIED = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED}

Call = Callable[[], Awaitable[Any]]
EXPERIMENT = textwrap.dedent(
    """\
    name: sweep-a
    framework: {name: python}
    command: "python -c 'print(\\"score=${x}\\")'"
    resources: {gpus: 0}
    results: {bucket: results}
    experiment:
      method: grid
      objective: {metric: score, goal: maximize}
      max_runs: 2
      max_parallel_runs: 2
      parameters:
        x: {type: int, min: 1, max: 2}
    """
)


class Victim:
    """What account A owns, and a snapshot of it as A sees it."""

    def __init__(self, platform: Platform):
        self.channel = platform.channel
        self.runs = gateway_pb2_grpc.TrainingServiceStub(platform.channel)
        self.done: gateway_pb2.Run
        self.live: gateway_pb2.Run
        self.connection: connections_pb2.Connection
        self.key_name: str
        self.experiment: experiments_pb2.Experiment

    async def create(self, platform: Platform) -> None:
        code = pack(
            {
                "train.py": "import os; open(os.environ['RESULT_DIR'] + '/model.txt', 'w').write('A')\n"
                "print('loss=0.25')\n"
            }
        )
        self.done = await wait_for(self.runs, (await submit(self.runs, manifest("python train.py"), code)).name)
        assert self.done.status.state == run_pb2.RUN_STATE_COMPLETED
        self.live = await submit(self.runs, manifest("python -c 'import time; time.sleep(60)'", name="live"))
        await wait_for(self.runs, self.live.name, {run_pb2.RUN_STATE_RUNNING})
        self.connection = await connections_pb2_grpc.ConnectionServiceStub(self.channel).CreateConnection(
            connections_pb2.CreateConnectionRequest(
                connection_id="store-a",
                connection=connections_pb2.Connection(
                    endpoint="http://127.0.0.1:9", access_key_id="AKIAVICTIM", secret_access_key="victim-secret"
                ),
            )
        )
        grant = await self.runs.CreateDataGrant(
            gateway_pb2.CreateDataGrantRequest(
                location=run_pb2.ObjectLocation(bucket="data-a"), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
            )
        )
        Path(grant.local.path, "train.csv").write_text("1,2,3\n")
        keys = await accounts_pb2_grpc.AccountServiceStub(self.channel).ListApiKeys(accounts_pb2.ListApiKeysRequest())
        self.key_name = keys.api_keys[0].name
        experiments = experiments_pb2_grpc.ExperimentServiceStub(self.channel)
        self.experiment = await experiments.CreateExperiment(
            experiments_pb2.CreateExperimentRequest(manifest=EXPERIMENT, request_id=uuid.uuid4().hex)
        )
        for _ in range(300):
            found = await experiments.GetExperiment(experiments_pb2.GetExperimentRequest(name=self.experiment.name))
            if found.state != experiments_pb2.EXPERIMENT_STATE_RUNNING:
                break
            await asyncio.sleep(0.2)
        assert found.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED, found.message

    async def snapshot(self) -> list[str]:
        accounts = accounts_pb2_grpc.AccountServiceStub(self.channel)
        connections = connections_pb2_grpc.ConnectionServiceStub(self.channel)
        done = await self.runs.GetRun(gateway_pb2.GetRunRequest(name=self.done.name))
        live = await self.runs.GetRun(gateway_pb2.GetRunRequest(name=self.live.name))
        views = [
            done.status,
            live.status.state,
            await self.runs.ListRuns(gateway_pb2.ListRunsRequest()),
            await connections.ListConnections(connections_pb2.ListConnectionsRequest()),
            await accounts.ListApiKeys(accounts_pb2.ListApiKeysRequest()),
            await accounts.GetAccount(accounts_pb2.GetAccountRequest()),
            await self.runs.ListObjects(
                gateway_pb2.ListObjectsRequest(location=run_pb2.ObjectLocation(bucket="data-a"))
            ),
            await self.runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=self.done.name)),
            await experiments_pb2_grpc.ExperimentServiceStub(self.channel).GetExperiment(
                experiments_pb2.GetExperimentRequest(name=self.experiment.name)
            ),
            await experiments_pb2_grpc.MetricsServiceStub(self.channel).ListRunMetrics(
                experiments_pb2.ListRunMetricsRequest(name=self.done.name)
            ),
        ]
        return [str(view) for view in views]


def attacks(b: grpc.aio.Channel, a: Victim) -> dict[str, list[Call]]:
    """Every public method, aimed at A by B: method → calls."""
    runs = gateway_pb2_grpc.TrainingServiceStub(b)
    billing = billing_pb2_grpc.BillingServiceStub(b)
    cluster = cluster_pb2_grpc.ClusterServiceStub(b)
    admin = cluster_pb2_grpc.AdminServiceStub(b)
    connections = connections_pb2_grpc.ConnectionServiceStub(b)
    accounts = accounts_pb2_grpc.AccountServiceStub(b)
    experiments = experiments_pb2_grpc.ExperimentServiceStub(b)
    metrics = experiments_pb2_grpc.MetricsServiceStub(b)
    experiment = a.experiment.name
    parent = "accounts/default"
    done, live = a.done.name, a.live.name
    done_id = done.rsplit("/", 1)[-1]
    data = run_pb2.ObjectLocation(bucket="data-a")

    async def drain(stream: Any) -> None:
        async for _ in stream:
            pass

    return {
        "TrainingService.CreateRun": [
            lambda: runs.CreateRun(gateway_pb2.CreateRunRequest(parent=parent, manifest=manifest("true"))),
        ],
        "TrainingService.GetRun": [
            lambda: runs.GetRun(gateway_pb2.GetRunRequest(name=done)),
            lambda: runs.GetRun(gateway_pb2.GetRunRequest(name=done_id)),  # an id resolves in B's account
        ],
        "TrainingService.ListRuns": [lambda: runs.ListRuns(gateway_pb2.ListRunsRequest(parent=parent))],
        "TrainingService.CancelRun": [
            lambda: runs.CancelRun(gateway_pb2.CancelRunRequest(name=live)),
            lambda: runs.CancelRun(gateway_pb2.CancelRunRequest(name=live.rsplit("/", 1)[-1])),
        ],
        "TrainingService.WatchRun": [lambda: drain(runs.WatchRun(gateway_pb2.WatchRunRequest(name=live)))],
        "TrainingService.StreamRunLogs": [
            lambda: drain(runs.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=done, follow=False)))
        ],
        "TrainingService.CreateDataGrant": [
            lambda: runs.CreateDataGrant(
                gateway_pb2.CreateDataGrantRequest(parent=parent, location=data, mode=gateway_pb2.DATA_ACCESS_MODE_READ)
            ),
        ],
        "TrainingService.CreateRunResultsGrant": [
            lambda: runs.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=done)),
        ],
        "TrainingService.CreateRunCodeGrant": [
            lambda: runs.CreateRunCodeGrant(gateway_pb2.CreateRunCodeGrantRequest(name=done)),
        ],
        "TrainingService.PurgeObjects": [
            lambda: runs.PurgeObjects(gateway_pb2.PurgeObjectsRequest(parent=parent, location=data, force=True)),
        ],
        "TrainingService.ListObjects": [
            lambda: runs.ListObjects(gateway_pb2.ListObjectsRequest(parent=parent, location=data)),
        ],
        "TrainingService.ListUsageRecords": [
            lambda: runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(parent=parent)),
            lambda: runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=done)),
        ],
        "BillingService.SummarizeUsage": [
            lambda: billing.SummarizeUsage(billing_pb2.SummarizeUsageRequest(parent=parent)),
            lambda: billing.SummarizeUsage(billing_pb2.SummarizeUsageRequest(run=done)),
        ],
        "BillingService.GetInvoice": [
            lambda: billing.GetInvoice(billing_pb2.GetInvoiceRequest(name=f"{parent}/invoices/2026-11")),
        ],
        "ClusterService.ListQueue": [lambda: cluster.ListQueue(cluster_pb2.ListQueueRequest(parent=parent))],
        "AdminService.SetAccountTier": [
            lambda: admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account=parent, tier="premium")),
        ],
        "AdminService.DrainNode": [lambda: admin.DrainNode(cluster_pb2.DrainNodeRequest(name="local"))],
        "AdminService.UndrainNode": [lambda: admin.UndrainNode(cluster_pb2.UndrainNodeRequest(name="local"))],
        "ConnectionService.CreateConnection": [
            lambda: connections.CreateConnection(
                connections_pb2.CreateConnectionRequest(
                    parent=parent,
                    connection_id="planted",
                    connection=connections_pb2.Connection(
                        endpoint="http://127.0.0.1:9", access_key_id="AKIAB", secret_access_key="b-secret"
                    ),
                )
            ),
        ],
        "ConnectionService.ListConnections": [
            lambda: connections.ListConnections(connections_pb2.ListConnectionsRequest(parent=parent)),
        ],
        "ConnectionService.DeleteConnection": [
            lambda: connections.DeleteConnection(connections_pb2.DeleteConnectionRequest(name=a.connection.name)),
        ],
        "AccountService.CreateAccount": [
            lambda: accounts.CreateAccount(accounts_pb2.CreateAccountRequest(account_id="b-" + uuid.uuid4().hex[:8])),
        ],
        "AccountService.GetAccount": [lambda: accounts.GetAccount(accounts_pb2.GetAccountRequest(name=parent))],
        "AccountService.ListAccounts": [lambda: accounts.ListAccounts(accounts_pb2.ListAccountsRequest())],
        "AccountService.CreateApiKey": [
            lambda: accounts.CreateApiKey(accounts_pb2.CreateApiKeyRequest(parent=parent)),
        ],
        "AccountService.ListApiKeys": [lambda: accounts.ListApiKeys(accounts_pb2.ListApiKeysRequest(parent=parent))],
        "ExperimentService.CreateExperiment": [
            lambda: experiments.CreateExperiment(
                experiments_pb2.CreateExperimentRequest(parent=parent, manifest=EXPERIMENT)
            ),
        ],
        "ExperimentService.GetExperiment": [
            lambda: experiments.GetExperiment(experiments_pb2.GetExperimentRequest(name=experiment)),
            lambda: experiments.GetExperiment(experiments_pb2.GetExperimentRequest(name=experiment.rsplit("/", 1)[-1])),
        ],
        "ExperimentService.ListExperiments": [
            lambda: experiments.ListExperiments(experiments_pb2.ListExperimentsRequest(parent=parent)),
        ],
        "ExperimentService.ExtendExperiment": [
            lambda: experiments.ExtendExperiment(experiments_pb2.ExtendExperimentRequest(name=experiment, runs=5)),
        ],
        "ExperimentService.CancelExperiment": [
            lambda: experiments.CancelExperiment(experiments_pb2.CancelExperimentRequest(name=experiment)),
        ],
        "MetricsService.ListRunMetrics": [
            lambda: metrics.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=done)),
        ],
        "MetricsService.StreamRunMetrics": [
            lambda: drain(metrics.StreamRunMetrics(experiments_pb2.StreamRunMetricsRequest(name=done, follow=False))),
        ],
        "AccountService.RevokeApiKey": [
            lambda: accounts.RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=a.key_name)),
            lambda: accounts.RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=a.key_name.rsplit("/", 1)[-1])),
        ],
    }


# Methods that name no account's resource: what they show is the same for every caller.
NOT_ACCOUNT_SCOPED = {"ClusterService.ListNodes"}


def public_methods() -> set[str]:
    """Every method of every service the gateway serves."""
    pool = descriptor_pool.Default()
    return {
        f"{service.name}.{method.name}"
        for service in map(pool.FindServiceByName, SERVICE_NAMES)
        for method in service.methods
    }


async def test_the_matrix_covers_every_public_method() -> None:
    assert public_methods() - NOT_ACCOUNT_SCOPED == _matrix_keys()


def _matrix_keys() -> set[str]:
    class _Nothing:
        done = live = gateway_pb2.Run(name="accounts/x/runs/y")
        experiment = experiments_pb2.Experiment(name="accounts/x/experiments/z")
        connection = connections_pb2.Connection(name="accounts/x/connections/z")
        key_name = "accounts/x/apiKeys/dlaas_00000000"

    return set(attacks(grpc.aio.insecure_channel("127.0.0.1:9"), _Nothing()).keys())  # type: ignore[arg-type]


@pytest.mark.parametrize("databases", ["sqlite", "postgres"], indirect=True)
async def test_another_account_can_neither_see_nor_change_anything_of_an_account(platform: Platform) -> None:
    a = Victim(platform)
    await a.create(platform)
    b = await platform.account_channel("intruder")
    before = await a.snapshot()

    for method, calls in attacks(b, a).items():
        for call in calls:
            try:
                await call()
            except grpc.aio.AioRpcError as error:
                assert error.code() in DENIED, (method, error.code(), error.details())
            else:
                pytest.fail(f"{method} answered account B about account A")

    assert await a.snapshot() == before
    # B's own views hold nothing of A's.
    mine = gateway_pb2_grpc.TrainingServiceStub(b)
    assert not (await mine.ListRuns(gateway_pb2.ListRunsRequest())).runs
    assert not (await cluster_pb2_grpc.ClusterServiceStub(b).ListQueue(cluster_pb2.ListQueueRequest())).entries
    assert not (
        await connections_pb2_grpc.ConnectionServiceStub(b).ListConnections(connections_pb2.ListConnectionsRequest())
    ).connections
    assert not (await mine.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest())).usage_records
    # A's results stay A's.
    assert (
        results_dir(await a.runs.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=a.done.name)))
        / "model.txt"
    ).read_text() == "A"
    await a.runs.CancelRun(gateway_pb2.CancelRunRequest(name=a.live.name))
    await wait_for(a.runs, a.live.name)  # its runner ends before the platform goes down
