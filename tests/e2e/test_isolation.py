"""Tenant isolation: account B, with a valid key of its own, aims every public RPC at account A's
runs, experiments, connections, keys, data and usage — by A's full names, by A's bare ids (which
resolve in B's own account) and by A's ids under B's own account — and B's own answers hold
nothing of A's. A's resources are the same afterwards.

What each attack must answer (docs/accounts.md, "Isolation"):
- NOT_FOUND, exactly, for anything of A's: a resource, or A's account as a parent. The same
  answer as for a name that does not exist, so nothing leaks that it does.
- PERMISSION_DENIED only for admin-only methods (AdminService, CreateAccount, ListAccounts,
  admin keys), whatever they name.
- An answer about B's own account (a bucket, a request id or an id that A uses too), holding
  none of A's names, ids, keys or data.

The matrix must name every method of every public service: a new RPC without a row fails
`test_the_matrix_covers_every_public_method`.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import textwrap
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from services.api_gateway.adapters.experiments_db import ExperimentRepository, ExperimentRow, TrialRow
from services.api_gateway.app import MIGRATIONS_DIR, SERVICE_NAMES, VERSION_TABLE
from services.common.db import create_engine, migrate
from tests.conftest import DatabaseFactory
from tests.support import Platform, closed_usage_records, manifest, pack, results_dir, submit, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.isolation]

NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
VICTIM, INTRUDER = "default", "intruder"
CODE_BUCKET = "dlaas-code"

Call = Callable[[], Awaitable[Any]]
T = TypeVar("T")
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


@dataclass(frozen=True)
class Attack:
    """One call of B's; `expect` None: it is answered, about B's own account, with nothing of A's."""

    call: Call
    expect: grpc.StatusCode | None


def missing(call: Call) -> Attack:
    return Attack(call, NOT_FOUND)


def admin_only(call: Call) -> Attack:
    return Attack(call, DENIED)


def own(call: Call) -> Attack:
    return Attack(call, None)


def each(kind: Callable[[Call], Attack], values: Iterable[T], call: Callable[[T], Awaitable[Any]]) -> list[Attack]:
    """The same attack with each of `values`."""
    return [kind(functools.partial(call, value)) for value in values]


@dataclass(frozen=True)
class Target:
    """A's resources, as B would learn their names (a log, a shared notebook)."""

    done: str
    live: str
    experiment: str
    connection: str
    key_name: str
    run_request_id: str
    experiment_request_id: str
    data_path: str

    def markers(self) -> list[str]:
        """What no answer to B may hold: A's account, ids, key, credentials and data."""
        ids = [name.rsplit("/", 1)[-1] for name in (self.done, self.live, self.experiment, self.key_name)]
        return [f"accounts/{VICTIM}", *ids, "AKIAVICTIM", "victim-secret", self.data_path, "train.csv", "model.txt"]


class Victim:
    """What account A owns, and a snapshot of it as A sees it."""

    def __init__(self, platform: Platform):
        self.channel = platform.channel
        self.runs = gateway_pb2_grpc.TrainingServiceStub(platform.channel)
        self.experiments = experiments_pb2_grpc.ExperimentServiceStub(platform.channel)
        self.target: Target

    async def create(self) -> None:
        code = pack(
            {
                "train.py": "import os; open(os.environ['RESULT_DIR'] + '/model.txt', 'w').write('A')\n"
                "print('loss=0.25')\n"
            }
        )
        run_request_id = uuid.uuid4().hex
        done = await wait_for(
            self.runs, (await submit(self.runs, manifest("python train.py"), code, run_request_id)).name
        )
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED
        live = await submit(self.runs, manifest("python -c 'import time; time.sleep(60)'", name="live"))
        await wait_for(self.runs, live.name, {run_pb2.RUN_STATE_RUNNING})
        connection = await connections_pb2_grpc.ConnectionServiceStub(self.channel).CreateConnection(
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
        experiment_request_id = uuid.uuid4().hex
        experiment = await self.experiments.CreateExperiment(
            experiments_pb2.CreateExperimentRequest(manifest=EXPERIMENT, request_id=experiment_request_id)
        )
        for _ in range(300):
            found = await self.experiments.GetExperiment(experiments_pb2.GetExperimentRequest(name=experiment.name))
            if found.state != experiments_pb2.EXPERIMENT_STATE_RUNNING:
                break
            await asyncio.sleep(0.2)
        assert found.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED, found.message
        # Usage is delivered to metering asynchronously: the snapshot waits until it has settled.
        for name in [done.name, *(t.run for t in found.trials)]:
            await closed_usage_records(self.runs, await self.runs.GetRun(gateway_pb2.GetRunRequest(name=name)))
        for _ in range(200):
            listing = await self.runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=live.name))
            if listing.usage_records:
                break
            await asyncio.sleep(0.05)
        assert listing.usage_records, "the live run's usage never opened"
        self.target = Target(
            done=done.name,
            live=live.name,
            experiment=experiment.name,
            connection=connection.name,
            key_name=keys.api_keys[0].name,
            run_request_id=run_request_id,
            experiment_request_id=experiment_request_id,
            data_path=grant.local.path,
        )

    async def snapshot(self) -> list[str]:
        accounts = accounts_pb2_grpc.AccountServiceStub(self.channel)
        connections = connections_pb2_grpc.ConnectionServiceStub(self.channel)
        target = self.target
        done = await self.runs.GetRun(gateway_pb2.GetRunRequest(name=target.done))
        live = await self.runs.GetRun(gateway_pb2.GetRunRequest(name=target.live))
        usage = await self.runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(page_size=1000))
        for record in usage.usage_records:
            if record.accruing:  # the live run's GPU time grows while we look: its length is not compared
                record.gpu_milliseconds = 0
        views = [
            done.status,
            live.status.state,
            live.status.transitions,
            await self.runs.ListRuns(gateway_pb2.ListRunsRequest(page_size=1000)),
            await connections.ListConnections(connections_pb2.ListConnectionsRequest()),
            await accounts.ListApiKeys(accounts_pb2.ListApiKeysRequest()),
            await accounts.GetAccount(accounts_pb2.GetAccountRequest()),
            *[
                await self.runs.ListObjects(gateway_pb2.ListObjectsRequest(location=run_pb2.ObjectLocation(bucket=b)))
                for b in ("data-a", "results", CODE_BUCKET)
            ],
            list(usage.usage_records),
            await self.experiments.GetExperiment(experiments_pb2.GetExperimentRequest(name=target.experiment)),
            await experiments_pb2_grpc.MetricsServiceStub(self.channel).ListRunMetrics(
                experiments_pb2.ListRunMetricsRequest(name=target.done)
            ),
        ]
        return [str(view) for view in views]


def attacks(b: grpc.aio.Channel, a: Target) -> dict[str, list[Attack]]:
    """Every public method, aimed at A by B: method → attacks."""
    runs = gateway_pb2_grpc.TrainingServiceStub(b)
    billing = billing_pb2_grpc.BillingServiceStub(b)
    cluster = cluster_pb2_grpc.ClusterServiceStub(b)
    admin = cluster_pb2_grpc.AdminServiceStub(b)
    connections = connections_pb2_grpc.ConnectionServiceStub(b)
    accounts = accounts_pb2_grpc.AccountServiceStub(b)
    experiments = experiments_pb2_grpc.ExperimentServiceStub(b)
    metrics = experiments_pb2_grpc.MetricsServiceStub(b)
    theirs, mine = f"accounts/{VICTIM}", f"accounts/{INTRUDER}"

    def three(name: str, collection: str) -> list[str]:
        """A's full name, A's bare id (resolved in B's account), A's id under B's own account."""
        resource_id = name.rsplit("/", 1)[-1]
        return [name, resource_id, f"{mine}/{collection}/{resource_id}"]

    done, live = three(a.done, "runs"), three(a.live, "runs")
    experiment = three(a.experiment, "experiments")
    key = three(a.key_name, "apiKeys")
    connection = three(a.connection, "connections")
    data = run_pb2.ObjectLocation(bucket="data-a")
    done_id = done[1]
    # Where A's results and code are, named in B's own account (the same bucket and prefix).
    a_places = [
        data,
        run_pb2.ObjectLocation(bucket="results", prefix=done_id),
        run_pb2.ObjectLocation(bucket=CODE_BUCKET),
    ]
    month = datetime.datetime.now(datetime.UTC).strftime("%Y-%m")
    read = gateway_pb2.DATA_ACCESS_MODE_READ

    async def drain(stream: Any) -> list[Any]:
        return [message async for message in stream]

    return {
        "TrainingService.CreateRun": [
            missing(lambda: runs.CreateRun(gateway_pb2.CreateRunRequest(parent=theirs, manifest=manifest("true")))),
            # A's request id, in B's account: a new run of B's, never A's run.
            own(
                lambda: runs.CreateRun(
                    gateway_pb2.CreateRunRequest(manifest=manifest("true", gpus=0), request_id=a.run_request_id)
                )
            ),
        ],
        "TrainingService.GetRun": each(missing, done, lambda n: runs.GetRun(gateway_pb2.GetRunRequest(name=n))),
        "TrainingService.ListRuns": [
            missing(lambda: runs.ListRuns(gateway_pb2.ListRunsRequest(parent=theirs))),
            own(lambda: runs.ListRuns(gateway_pb2.ListRunsRequest(parent=mine))),
        ],
        "TrainingService.CancelRun": each(
            missing, live, lambda n: runs.CancelRun(gateway_pb2.CancelRunRequest(name=n))
        ),
        "TrainingService.WatchRun": each(
            missing, live, lambda n: drain(runs.WatchRun(gateway_pb2.WatchRunRequest(name=n)))
        ),
        "TrainingService.StreamRunLogs": each(
            missing, done, lambda n: drain(runs.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=n, follow=False)))
        ),
        "TrainingService.CreateDataGrant": [
            missing(
                lambda: runs.CreateDataGrant(
                    gateway_pb2.CreateDataGrantRequest(parent=theirs, location=data, mode=read)
                )
            ),
            # The same bucket name in B's account is B's own bucket, elsewhere.
            own(lambda: runs.CreateDataGrant(gateway_pb2.CreateDataGrantRequest(location=data, mode=read))),
        ],
        "TrainingService.CreateRunResultsGrant": each(
            missing, done, lambda n: runs.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=n))
        ),
        "TrainingService.CreateRunCodeGrant": each(
            missing, done, lambda n: runs.CreateRunCodeGrant(gateway_pb2.CreateRunCodeGrantRequest(name=n))
        ),
        "TrainingService.PurgeObjects": [
            missing(
                lambda: runs.PurgeObjects(gateway_pb2.PurgeObjectsRequest(parent=theirs, location=data, force=True))
            ),
            *each(own, a_places, lambda p: runs.PurgeObjects(gateway_pb2.PurgeObjectsRequest(location=p, force=True))),
        ],
        "TrainingService.ListObjects": [
            missing(lambda: runs.ListObjects(gateway_pb2.ListObjectsRequest(parent=theirs, location=data))),
            *each(own, a_places, lambda p: runs.ListObjects(gateway_pb2.ListObjectsRequest(location=p))),
        ],
        "TrainingService.ListUsageRecords": [
            missing(lambda: runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(parent=theirs))),
            missing(lambda: runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=a.done))),
            # A filter by a run of B's own account that B does not have: nothing.
            *each(own, done[1:], lambda n: runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=n))),
            own(lambda: runs.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest())),
        ],
        "BillingService.SummarizeUsage": [
            missing(lambda: billing.SummarizeUsage(billing_pb2.SummarizeUsageRequest(parent=theirs))),
            missing(lambda: billing.SummarizeUsage(billing_pb2.SummarizeUsageRequest(run=a.done))),
            *each(own, done[1:], lambda n: billing.SummarizeUsage(billing_pb2.SummarizeUsageRequest(run=n))),
            own(
                lambda: billing.SummarizeUsage(
                    billing_pb2.SummarizeUsageRequest(group_by=billing_pb2.USAGE_GROUPING_RUN)
                )
            ),
        ],
        "BillingService.GetInvoice": [
            missing(lambda: billing.GetInvoice(billing_pb2.GetInvoiceRequest(name=f"{theirs}/invoices/{month}"))),
            own(lambda: billing.GetInvoice(billing_pb2.GetInvoiceRequest(name=month))),
            own(lambda: billing.GetInvoice(billing_pb2.GetInvoiceRequest(name=f"{mine}/invoices/{month}"))),
        ],
        "ClusterService.ListQueue": [
            missing(lambda: cluster.ListQueue(cluster_pb2.ListQueueRequest(parent=theirs))),
            own(lambda: cluster.ListQueue(cluster_pb2.ListQueueRequest())),
        ],
        # The same for every caller; it names no run.
        "ClusterService.ListNodes": [own(lambda: cluster.ListNodes(cluster_pb2.ListNodesRequest()))],
        "AdminService.SetAccountTier": each(
            admin_only,
            (theirs, mine),
            lambda n: admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account=n, tier="premium")),
        ),
        "AdminService.DrainNode": [admin_only(lambda: admin.DrainNode(cluster_pb2.DrainNodeRequest(name="local")))],
        "AdminService.UndrainNode": [
            admin_only(lambda: admin.UndrainNode(cluster_pb2.UndrainNodeRequest(name="local")))
        ],
        # Before CreateConnection below, which makes B a connection of the same id.
        "ConnectionService.DeleteConnection": each(
            missing, connection, lambda n: connections.DeleteConnection(connections_pb2.DeleteConnectionRequest(name=n))
        ),
        "ConnectionService.CreateConnection": [
            missing(
                lambda: connections.CreateConnection(
                    connections_pb2.CreateConnectionRequest(
                        parent=theirs,
                        connection_id="planted",
                        connection=connections_pb2.Connection(
                            endpoint="http://127.0.0.1:9", access_key_id="AKIAB", secret_access_key="b-secret"
                        ),
                    )
                )
            ),
            # A's connection id in B's account: B's own connection (ALREADY_EXISTS would tell B of A's).
            own(
                lambda: connections.CreateConnection(
                    connections_pb2.CreateConnectionRequest(
                        connection_id=connection[1],
                        connection=connections_pb2.Connection(
                            endpoint="http://127.0.0.1:9", access_key_id="AKIAB", secret_access_key="b-secret"
                        ),
                    )
                )
            ),
        ],
        "ConnectionService.ListConnections": [
            missing(lambda: connections.ListConnections(connections_pb2.ListConnectionsRequest(parent=theirs))),
            own(lambda: connections.ListConnections(connections_pb2.ListConnectionsRequest())),
        ],
        "AccountService.CreateAccount": [
            admin_only(
                lambda: accounts.CreateAccount(
                    accounts_pb2.CreateAccountRequest(account_id="b-" + uuid.uuid4().hex[:8])
                )
            ),
        ],
        "AccountService.GetAccount": [
            missing(lambda: accounts.GetAccount(accounts_pb2.GetAccountRequest(name=theirs))),
            own(lambda: accounts.GetAccount(accounts_pb2.GetAccountRequest(name=mine))),
        ],
        "AccountService.ListAccounts": [admin_only(lambda: accounts.ListAccounts(accounts_pb2.ListAccountsRequest()))],
        "AccountService.CreateApiKey": [
            missing(lambda: accounts.CreateApiKey(accounts_pb2.CreateApiKeyRequest(parent=theirs))),
            admin_only(lambda: accounts.CreateApiKey(accounts_pb2.CreateApiKeyRequest(admin=True))),
        ],
        "AccountService.ListApiKeys": [
            missing(lambda: accounts.ListApiKeys(accounts_pb2.ListApiKeysRequest(parent=theirs))),
            own(lambda: accounts.ListApiKeys(accounts_pb2.ListApiKeysRequest())),
        ],
        "AccountService.RevokeApiKey": each(
            missing, key, lambda n: accounts.RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=n))
        ),
        "ExperimentService.CreateExperiment": [
            missing(
                lambda: experiments.CreateExperiment(
                    experiments_pb2.CreateExperimentRequest(parent=theirs, manifest=EXPERIMENT)
                )
            ),
            # A's request id, in B's account: a new experiment of B's, never A's.
            own(
                lambda: experiments.CreateExperiment(
                    experiments_pb2.CreateExperimentRequest(
                        manifest=EXPERIMENT.replace("max_runs: 2", "max_runs: 1"),
                        request_id=a.experiment_request_id,
                    )
                )
            ),
        ],
        "ExperimentService.GetExperiment": each(
            missing, experiment, lambda n: experiments.GetExperiment(experiments_pb2.GetExperimentRequest(name=n))
        ),
        "ExperimentService.ListExperiments": [
            missing(lambda: experiments.ListExperiments(experiments_pb2.ListExperimentsRequest(parent=theirs))),
            own(lambda: experiments.ListExperiments(experiments_pb2.ListExperimentsRequest())),
        ],
        "ExperimentService.ExtendExperiment": each(
            missing,
            experiment,
            lambda n: experiments.ExtendExperiment(experiments_pb2.ExtendExperimentRequest(name=n, runs=1)),
        ),
        "ExperimentService.CancelExperiment": each(
            missing, experiment, lambda n: experiments.CancelExperiment(experiments_pb2.CancelExperimentRequest(name=n))
        ),
        "MetricsService.ListRunMetrics": each(
            missing, done, lambda n: metrics.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=n))
        ),
        "MetricsService.StreamRunMetrics": each(
            missing,
            done,
            lambda n: drain(metrics.StreamRunMetrics(experiments_pb2.StreamRunMetricsRequest(name=n, follow=False))),
        ),
    }


def public_methods() -> set[str]:
    """Every method of every service the gateway serves."""
    pool = descriptor_pool.Default()
    return {
        f"{service.name}.{method.name}"
        for service in map(pool.FindServiceByName, SERVICE_NAMES)
        for method in service.methods
    }


async def test_the_matrix_covers_every_public_method() -> None:
    nothing = Target(
        done="accounts/x/runs/y",
        live="accounts/x/runs/z",
        experiment="accounts/x/experiments/e",
        connection="accounts/x/connections/c",
        key_name="accounts/x/apiKeys/dlaas_00000000",
        run_request_id="r",
        experiment_request_id="e",
        data_path="/nowhere",
    )
    assert public_methods() == set(attacks(grpc.aio.insecure_channel("127.0.0.1:9"), nothing))


@pytest.mark.parametrize("databases", ["sqlite", "postgres"], indirect=True)
async def test_another_account_can_neither_see_nor_change_anything_of_an_account(platform: Platform) -> None:
    a = Victim(platform)
    await a.create()
    b = await platform.account_channel(INTRUDER)
    before = await a.snapshot()
    markers = a.target.markers()

    for method, calls in attacks(b, a.target).items():
        for index, attack in enumerate(calls):
            where = f"{method} #{index + 1}"
            try:
                answer = await attack.call()
            except grpc.aio.AioRpcError as error:
                assert attack.expect is not None, (where, "B's own call failed", error.code(), error.details())
                assert error.code() == attack.expect, (where, error.code(), error.details())
            else:
                assert attack.expect is None, f"{where} answered account B about account A: {answer}"
                leaked = [marker for marker in markers if marker in str(answer)]
                assert not leaked, (where, leaked, str(answer)[:2000])

    assert await a.snapshot() == before
    # A's results stay A's.
    results = await a.runs.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=a.target.done))
    assert (results_dir(results) / "model.txt").read_text() == "A"
    # What B made with A's request ids and connection id is B's own, and all B has: a run, an
    # experiment (and its trial's run), a connection.
    mine = gateway_pb2_grpc.TrainingServiceStub(b)
    b_experiments = experiments_pb2_grpc.ExperimentServiceStub(b)
    (experiment,) = (await b_experiments.ListExperiments(experiments_pb2.ListExperimentsRequest())).experiments
    assert experiment.name.startswith(f"accounts/{INTRUDER}/experiments/")
    b_runs = (await mine.ListRuns(gateway_pb2.ListRunsRequest())).runs
    assert len(b_runs) in (1, 2) and all(r.name.startswith(f"accounts/{INTRUDER}/runs/") for r in b_runs), b_runs
    (connection,) = (
        await connections_pb2_grpc.ConnectionServiceStub(b).ListConnections(connections_pb2.ListConnectionsRequest())
    ).connections
    assert connection.name == f"accounts/{INTRUDER}/connections/store-a" and connection.access_key_hint == "…KIAB"
    # Every runner ends before the platform goes down.
    await b_experiments.CancelExperiment(experiments_pb2.CancelExperimentRequest(name=experiment.name))
    await a.runs.CancelRun(gateway_pb2.CancelRunRequest(name=a.target.live))
    await wait_for(a.runs, a.target.live)
    for run in (await mine.ListRuns(gateway_pb2.ListRunsRequest())).runs:
        await wait_for(mine, run.name)


async def test_experiment_rows_are_read_and_written_only_with_their_account(sqlite_databases: DatabaseFactory) -> None:
    """The experiment tables answer a query only for the account named in it, whatever name it gives."""
    url = sqlite_databases.url("gateway")
    await asyncio.to_thread(migrate, url, MIGRATIONS_DIR, VERSION_TABLE)
    engine = create_engine(url)
    repo = ExperimentRepository(engine)
    name = f"accounts/{VICTIM}/experiments/exp-a"
    row = ExperimentRow(
        name=name,
        account=VICTIM,
        request_id="request-a",
        display_name="a",
        manifest="name: a",
        spec=b"",
        code_key=None,
        config="{}",
        tier="free",
        max_runs=2,
        extensions=0,
        extend_request_id=None,
        state=1,
        message="",
        best_run=None,
        best_value=None,
        created_ms=1,
    )
    trial = TrialRow(name, 1, f"accounts/{VICTIM}/runs/exp-a-1", {"x": "1"}, 0, None)
    try:
        assert await repo.add(row)
        assert await repo.add_trial(VICTIM, trial)
        # Another account, with A's very name: nothing to read, nothing written.
        assert await repo.get(INTRUDER, name) is None
        assert await repo.by_request(INTRUDER, "request-a") is None
        assert await repo.trials(INTRUDER, name) == []
        assert await repo.trial_counts(INTRUDER, [name]) == {}
        await repo.update(INTRUDER, name, state=4, message="cancelled by B")
        changed = TrialRow(name, 1, trial.run, {"x": "1"}, 0, None, stop_requested=True, failure_cause="B")
        await repo.save_trial(INTRUDER, changed)
        assert not await repo.add_trial(INTRUDER, TrialRow(name, 2, f"accounts/{INTRUDER}/runs/x", {}, 0, None))
        assert await repo.get(VICTIM, name) == row
        assert await repo.trials(VICTIM, name) == [trial]
        assert await repo.trial_counts(VICTIM, [name]) == {name: 1}
        # A's own account reads and writes them.
        await repo.save_trial(VICTIM, changed)
        assert await repo.trials(VICTIM, name) == [changed]
    finally:
        await engine.dispose()
