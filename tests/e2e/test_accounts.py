"""Accounts and API keys through the real gateway: who may call, as whom, how often; and the
service credential between our services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr

from dlaas.gateway.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    connections_pb2,
    connections_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from dlaas.runner.config import RunnerConfig
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.api_gateway.app import SERVICE_NAMES
from services.api_gateway.settings import RateLimit
from services.common.auth import MissingServiceToken
from services.common.clients import open_channel
from services.common.settings import ServiceCredentials
from services.scheduler.app import build_server as build_scheduler
from services.scheduler.runtime import scheduler as scheduler_runtime
from services.scheduler.settings import SchedulerSettings
from tests.conftest import DatabaseFactory
from tests.support import (
    ADMIN_KEY,
    Platform,
    gateway_channel,
    manifest,
    start_gateway,
    start_platform,
    submit,
    wait_for,
)

pytestmark = pytest.mark.e2e


def accounts(channel: grpc.aio.Channel) -> accounts_pb2_grpc.AccountServiceAsyncStub:
    return accounts_pb2_grpc.AccountServiceStub(channel)


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


STORE = connections_pb2.Connection(endpoint="http://127.0.0.1:9", access_key_id="AKIAX", secret_access_key="x")


def public_methods() -> list[MethodDescriptor]:
    """Every method of every service the gateway serves, from the proto descriptors."""
    pool = descriptor_pool.Default()
    return [method for service in map(pool.FindServiceByName, SERVICE_NAMES) for method in service.methods]


async def call_method(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, timeout: float = 10
) -> object:
    """Calls `method` as a generic client would (unary or server-streaming), reading a stream to its end."""
    assert not method.client_streaming, f"{method.full_name}: a client-streaming method needs a row here"
    path = f"/{method.containing_service.full_name}/{method.name}"
    reply = GetMessageClass(method.output_type)
    if method.server_streaming:
        stream = channel.unary_stream(path, Message.SerializeToString, reply.FromString)
        return [message async for message in stream(request, timeout=timeout)]
    return await channel.unary_unary(path, Message.SerializeToString, reply.FromString)(request, timeout=timeout)


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_every_public_method_refuses_a_missing_or_wrong_key_and_changes_nothing(platform: Platform) -> None:
    address = platform.gateway.address
    mine = platform.client
    live = await submit(mine, manifest("python -c 'import time; time.sleep(30)'", gpus=0))
    await wait_for(mine, live.name, {run_pb2.RUN_STATE_RUNNING})
    connection = await connections_pb2_grpc.ConnectionServiceStub(platform.channel).CreateConnection(
        connections_pb2.CreateConnectionRequest(connection_id="store", connection=STORE)
    )
    data = run_pb2.ObjectLocation(bucket="data")
    grant = await mine.CreateDataGrant(
        gateway_pb2.CreateDataGrantRequest(location=data, mode=gateway_pb2.DATA_ACCESS_MODE_WRITE)
    )
    Path(grant.local.path, "train.csv").write_text("1,2,3\n")
    revoked = await accounts(platform.channel).CreateApiKey(accounts_pb2.CreateApiKeyRequest())
    await accounts(platform.channel).RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=revoked.api_key.prefix))
    cluster = cluster_pb2_grpc.ClusterServiceStub(platform.channel)
    (node,) = (await cluster.ListNodes(cluster_pb2.ListNodesRequest())).nodes

    async def snapshot() -> str:
        views = [
            await mine.ListRuns(gateway_pb2.ListRunsRequest()),
            await connections_pb2_grpc.ConnectionServiceStub(platform.channel).ListConnections(
                connections_pb2.ListConnectionsRequest()
            ),
            await accounts(platform.channel).ListApiKeys(accounts_pb2.ListApiKeysRequest()),
            await accounts(platform.admin).ListAccounts(accounts_pb2.ListAccountsRequest()),
            await experiments_pb2_grpc.ExperimentServiceStub(platform.channel).ListExperiments(
                experiments_pb2.ListExperimentsRequest()
            ),
            await mine.ListObjects(gateway_pb2.ListObjectsRequest(location=data)),
            await cluster.ListNodes(cluster_pb2.ListNodesRequest()),
        ]
        return "".join(map(str, views))

    # What each mutating method would do with a valid key; the others are sent empty.
    requests: dict[str, Message] = {
        "TrainingService.CreateRun": gateway_pb2.CreateRunRequest(manifest=manifest("true", gpus=0)),
        "TrainingService.CancelRun": gateway_pb2.CancelRunRequest(name=live.name),
        "TrainingService.WatchRun": gateway_pb2.WatchRunRequest(name=live.name),
        "TrainingService.CreateDataGrant": gateway_pb2.CreateDataGrantRequest(
            location=data, mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
        ),
        "TrainingService.PurgeObjects": gateway_pb2.PurgeObjectsRequest(location=data, force=True),
        "ConnectionService.CreateConnection": connections_pb2.CreateConnectionRequest(
            connection_id="planted", connection=STORE
        ),
        "ConnectionService.DeleteConnection": connections_pb2.DeleteConnectionRequest(name=connection.name),
        "AccountService.CreateAccount": accounts_pb2.CreateAccountRequest(account_id="mallory"),
        "AccountService.CreateApiKey": accounts_pb2.CreateApiKeyRequest(admin=True),
        "AccountService.RevokeApiKey": accounts_pb2.RevokeApiKeyRequest(name=platform.key[:14]),
        "AdminService.SetAccountTier": cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="premium"),
        "AdminService.DrainNode": cluster_pb2.DrainNodeRequest(name=node.name),
        "ExperimentService.CreateExperiment": experiments_pb2.CreateExperimentRequest(
            manifest=manifest("true", gpus=0) + "experiment: {method: random, objective: {metric: loss}, max_runs: 1}\n"
        ),
    }
    methods = public_methods()
    assert set(requests) <= {f"{m.containing_service.name}.{m.name}" for m in methods}
    before = await snapshot()
    wrong_secret = platform.key[:-4] + ("AAAA" if not platform.key.endswith("AAAA") else "BBBB")
    keys: dict[str, str | None] = {
        "no key": None,
        "a wrong secret for a real prefix": wrong_secret,
        "an unknown key": "dlaas_00000000_" + "x" * 43,
        "a malformed key": "not-a-key",
        "a revoked key": revoked.secret,
    }
    for what, key in keys.items():
        channel = grpc.aio.insecure_channel(address) if key is None else gateway_channel(address, key)
        async with channel:
            for method in methods:
                name = f"{method.containing_service.name}.{method.name}"
                request = requests.get(name) or GetMessageClass(method.input_type)()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call_method(channel, method, request)
                error = refused.value
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (what, name, error.code(), error.details())
                if key is None:
                    assert "DLAAS_API_KEY" in (error.details() or ""), name
                else:
                    assert key not in str(error) and key[-20:] not in str(error), (what, name)
    assert await snapshot() == before
    assert (await mine.GetRun(gateway_pb2.GetRunRequest(name=live.name))).status.state == run_pb2.RUN_STATE_RUNNING
    await mine.CancelRun(gateway_pb2.CancelRunRequest(name=live.name))
    await wait_for(mine, live.name)


async def test_admin_creates_accounts_and_a_key_is_shown_once_and_stored_as_a_hash(
    platform: Platform, databases: DatabaseFactory, tmp_path: Path
) -> None:
    admin = accounts(platform.admin)
    request_id = uuid.uuid4().hex
    created = await admin.CreateAccount(
        accounts_pb2.CreateAccountRequest(account_id="alice", tier="standard", request_id=request_id)
    )
    assert created.account.name == "accounts/alice" and created.account.tier == "standard"
    assert created.secret.startswith(created.api_key.prefix + "_")
    # A retry answers with the same key, without its secret; a second create is ALREADY_EXISTS.
    retried = await admin.CreateAccount(
        accounts_pb2.CreateAccountRequest(account_id="alice", tier="standard", request_id=request_id)
    )
    assert retried.api_key.prefix == created.api_key.prefix and retried.secret == ""
    assert await code_of(admin.CreateAccount(accounts_pb2.CreateAccountRequest(account_id="alice"))) == (
        grpc.StatusCode.ALREADY_EXISTS
    )

    async with gateway_channel(platform.gateway.address, created.secret) as alice:
        me = await accounts(alice).GetAccount(accounts_pb2.GetAccountRequest())
        assert me.name == "accounts/alice" and me.tier == "standard"
        # Not an admin: account administration and operator actions are refused.
        assert await code_of(accounts(alice).ListAccounts(accounts_pb2.ListAccountsRequest())) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        drain = cluster_pb2_grpc.AdminServiceStub(alice).DrainNode(cluster_pb2.DrainNodeRequest(name="local"))
        assert await code_of(drain) == grpc.StatusCode.PERMISSION_DENIED

    listed = await admin.ListAccounts(accounts_pb2.ListAccountsRequest())
    assert {a.name for a in listed.accounts} >= {"accounts/alice", "accounts/default", "accounts/admin"}
    # Only a hash is kept: the gateway's database holds neither key (its raw bytes, on SQLite).
    if databases.kind == "sqlite":
        raw = b"".join(path.read_bytes() for path in tmp_path.glob("gateway.db*"))
        assert created.api_key.prefix.encode() in raw
        assert created.secret.encode() not in raw and platform.key.encode() not in raw


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_bad_account_requests_name_the_field_and_store_nothing(platform: Platform) -> None:
    admin = accounts(platform.admin)
    before = await admin.ListAccounts(accounts_pb2.ListAccountsRequest())
    for account_id, tier, field in [
        ("Not Valid", "free", "account_id"),
        ("9starts-with-digit", "free", "account_id"),
        ("x" * 64, "free", "account_id"),
        ("carol", "platinum", "tier"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await admin.CreateAccount(accounts_pb2.CreateAccountRequest(account_id=account_id, tier=tier))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(bad.value)
        assert status is not None
        fields = []
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                request = error_details_pb2.BadRequest()
                detail.Unpack(request)
                fields += [v.field for v in request.field_violations]
        assert fields == [field]
    listed = await admin.ListAccounts(accounts_pb2.ListAccountsRequest())
    assert listed == before


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_keys_are_listed_by_prefix_rotated_and_revoked_at_once(platform: Platform) -> None:
    mine = accounts(platform.channel)
    second = await mine.CreateApiKey(accounts_pb2.CreateApiKeyRequest(description="ci"))
    listed = await mine.ListApiKeys(accounts_pb2.ListApiKeysRequest())
    assert {k.prefix for k in listed.api_keys} == {second.api_key.prefix, platform.key[:14]}
    assert second.secret not in str(listed) and platform.key not in str(listed)

    # Revoke the first key with the second: the first stops working at once, the second works on.
    first_prefix = platform.key[:14]
    async with gateway_channel(platform.gateway.address, second.secret) as rotated:
        revoked = await accounts(rotated).RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=first_prefix))
        assert revoked.HasField("revoke_time")
        assert (await accounts(rotated).GetAccount(accounts_pb2.GetAccountRequest())).name == "accounts/default"
    assert await code_of(mine.GetAccount(accounts_pb2.GetAccountRequest())) == grpc.StatusCode.UNAUTHENTICATED


async def test_submissions_beyond_the_tier_rate_are_refused_with_a_retry_delay(
    sqlite_databases: DatabaseFactory, tmp_path: Path
) -> None:
    limits = {"free": RateLimit(per_second=0.5, burst=2)}
    platform = await start_platform(sqlite_databases, tmp_path, gateway={"submission_limits": limits})
    try:
        accepted = [await submit(platform.client, manifest("true", gpus=0), request_id=f"first-{i}") for i in range(2)]
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await submit(platform.client, manifest("true", gpus=0))
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Over the rate, a retry of an earlier call is still answered as that call was.
        retried = await submit(platform.client, manifest("true", gpus=0), request_id="first-0")
        assert retried.name == accepted[0].name
        status = rpc_status.from_call(limited.value)
        assert status is not None
        delays = []
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                delays.append(info.retry_delay.ToMilliseconds())
        assert len(delays) == 1 and 0 < delays[0] <= 2000
        # Nothing of the refused submission was stored; a bad manifest is not counted, only refused.
        listed = await platform.client.ListRuns(gateway_pb2.ListRunsRequest())
        assert {r.name for r in listed.runs} == {r.name for r in accepted}
        assert await code_of(platform.client.CreateRun(gateway_pb2.CreateRunRequest(manifest="gpus: -1"))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        # Another account has a bucket of its own.
        other = gateway_pb2_grpc.TrainingServiceStub(await platform.account_channel("other"))
        await submit(other, manifest("true", gpus=0))
        await asyncio.sleep(delays[0] / 1000 + 0.1)
        last = await submit(platform.client, manifest("true", gpus=0))
        for run in [*accepted, last]:
            await wait_for(platform.client, run.name)  # runners end before the platform goes down
        await wait_for(other, (await other.ListRuns(gateway_pb2.ListRunsRequest())).runs[0].name)
    finally:
        await platform.stop()


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_internal_services_refuse_calls_without_the_service_credential(platform: Platform) -> None:
    calls: dict[str, Callable[[grpc.aio.Channel], Awaitable[object]]] = {
        platform.scheduler.address: lambda ch: scheduler_pb2_grpc.SchedulerServiceStub(ch).ListRuns(
            scheduler_pb2.ListRunsRequest(parent="accounts/default")
        ),
        platform.storage.address: lambda ch: storage_pb2_grpc.StorageServiceStub(ch).ListConnections(
            storage_pb2.ListConnectionsRequest(parent="accounts/default")
        ),
        platform.metering.address: lambda ch: metering_pb2_grpc.MeteringServiceStub(ch).ListUsageRecords(
            metering_pb2.ListUsageRecordsRequest(parent="accounts/default")
        ),
    }
    for address, call in calls.items():
        for wrong in (None, SecretStr("wrong")):
            async with open_channel(address, ServiceCredentials(wrong)) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(channel)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, address
        # An API key is no service credential either.
        async with gateway_channel(address, platform.key) as channel:
            assert await code_of(call(channel)) == grpc.StatusCode.UNAUTHENTICATED
    # A runner's callback needs no service token, but its own run's token: one run's token is
    # refused for another run.
    sleep = manifest("python -c 'import time; time.sleep(30)'", gpus=0)
    first, second = [await submit(platform.client, sleep) for _ in range(2)]
    for run in (first, second):
        await wait_for(platform.client, run.name, {run_pb2.RUN_STATE_RUNNING})
    (config,) = platform.jobs_dir.glob(f"default/{first.name.rsplit('/', 1)[-1]}-a*/runner.json")
    loaded = RunnerConfig.load(config)
    token, attempt = loaded.run_token, loaded.attempt
    async with grpc.aio.insecure_channel(platform.scheduler.address) as runner:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(runner)

        def report(name: str, run_token: str) -> object:
            return stub.ReportRunProgress(
                scheduler_pb2.ReportRunProgressRequest(
                    name=name, attempt=attempt, run_token=run_token, state=run_pb2.RUN_STATE_RUNNING
                )
            )

        assert await code_of(report(second.name, token)) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(report(first.name, "guess")) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(report(first.name, token)) == grpc.StatusCode.OK
    for run in (first, second):
        await platform.client.CancelRun(gateway_pb2.CancelRunRequest(name=run.name))
        await wait_for(platform.client, run.name)


async def test_an_internal_service_does_not_start_without_a_service_token(
    sqlite_databases: DatabaseFactory, tmp_path: Path
) -> None:
    settings = SchedulerSettings(
        database_url=sqlite_databases.url("scheduler"), jobs_dir=str(tmp_path / "jobs"), service_token=None
    )
    with pytest.raises(MissingServiceToken, match="DLAAS_SERVICE_TOKEN"):
        await build_scheduler(settings)


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_the_admin_key_is_installed_once(platform: Platform, databases: DatabaseFactory) -> None:
    # The platform's gateway installed ADMIN_KEY on start; it works, as an admin of account "admin".
    me = await accounts(platform.admin).GetAccount(accounts_pb2.GetAccountRequest())
    assert me.name == "accounts/admin"
    # A second gateway on the same database (a restart, a replica) installs nothing more.
    again = await start_gateway(
        databases, platform.scheduler.address, platform.storage.address, platform.metering.address
    )
    try:
        async with gateway_channel(again.address, ADMIN_KEY) as admin:
            keys = await accounts(admin).ListApiKeys(accounts_pb2.ListApiKeysRequest())
        assert [k.prefix for k in keys.api_keys] == [ADMIN_KEY[:14]] and keys.api_keys[0].admin
    finally:
        await again.stop(0)
    # The last admin key cannot be revoked (nobody could administer the platform any more).
    last = accounts(platform.admin).RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=ADMIN_KEY[:14]))
    assert await code_of(last) == grpc.StatusCode.FAILED_PRECONDITION
    second = await accounts(platform.admin).CreateApiKey(accounts_pb2.CreateApiKeyRequest(admin=True))
    async with gateway_channel(platform.gateway.address, second.secret) as admin:
        await accounts(admin).RevokeApiKey(accounts_pb2.RevokeApiKeyRequest(name=ADMIN_KEY[:14]))
        assert (await accounts(admin).ListAccounts(accounts_pb2.ListAccountsRequest())).accounts
    # Only an admin may make an admin key.
    promote = accounts(platform.channel).CreateApiKey(accounts_pb2.CreateApiKeyRequest(admin=True))
    assert await code_of(promote) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_run_token_dies_with_its_run(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run token works for its own run while it lives: after the run ended, its runner's callbacks
    (state, metrics) and its grant's renewal are refused, and nothing changes; another run's token
    never works."""
    # The scheduler takes a last batch of metrics for METRICS_GRACE_MS after the end (it may trail
    # the final report); none here, so that the refusal shows at once.
    monkeypatch.setattr(scheduler_runtime, "METRICS_GRACE_MS", 0)
    client = platform.client
    sleep = manifest("python -c 'import time; time.sleep(30)'", gpus=0)
    ended, live = [await submit(client, sleep) for _ in range(2)]
    for run in (ended, live):
        await wait_for(client, run.name, {run_pb2.RUN_STATE_RUNNING})

    def runner_config(run: gateway_pb2.Run) -> RunnerConfig:
        (path,) = platform.jobs_dir.glob(f"default/{run.name.rsplit('/', 1)[-1]}-a*/runner.json")
        return RunnerConfig.load(path)

    # The tokens as a runner holds them (its runner.json loses them when its attempt ends).
    old, current = runner_config(ended), runner_config(live)
    assert old.grant and current.grant
    await client.CancelRun(gateway_pb2.CancelRunRequest(name=ended.name))
    ended = await wait_for(client, ended.name)
    assert ended.status.state == run_pb2.RUN_STATE_CANCELLED
    point = run_pb2.MetricPoint(name="loss", value=-1.0, step=99, sequence=1000)
    async with (
        grpc.aio.insecure_channel(platform.scheduler.address) as to_scheduler,
        grpc.aio.insecure_channel(platform.storage.address) as to_storage,
    ):
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(to_scheduler)
        storage = storage_pb2_grpc.StorageServiceStub(to_storage)

        def report(config: RunnerConfig, token: str, state: int) -> object:
            return scheduler.ReportRunProgress(
                scheduler_pb2.ReportRunProgressRequest(
                    name=config.run,
                    attempt=config.attempt,
                    run_token=token,
                    state=state,  # type: ignore[arg-type]
                    termination_reason=run_pb2.TERMINATION_REASON_USER,
                )
            )

        def metrics(config: RunnerConfig, token: str) -> object:
            return scheduler.ReportRunMetrics(
                scheduler_pb2.ReportRunMetricsRequest(
                    name=config.run, attempt=config.attempt, run_token=token, points=[point]
                )
            )

        def renew(config: RunnerConfig, token: str) -> object:
            return storage.RenewGrant(storage_pb2.RenewGrantRequest(name=config.grant, run_token=token))

        # Another run's token, the ended run's included, works for no other run.
        assert await code_of(metrics(current, old.run_token)) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(report(current, old.run_token, run_pb2.RUN_STATE_RUNNING)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(renew(current, old.run_token)) == grpc.StatusCode.PERMISSION_DENIED
        # Its own token works while the run lives.
        assert await code_of(renew(current, current.run_token)) == grpc.StatusCode.OK
        assert await code_of(metrics(current, current.run_token)) == grpc.StatusCode.OK
        # After the end: every callback of the ended run is refused. Its grant's revocation is
        # asynchronous (retried until storage answers): a moment after the end, renewal stops.
        refused = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED}
        for state in (run_pb2.RUN_STATE_RUNNING, run_pb2.RUN_STATE_UPLOADING, run_pb2.RUN_STATE_COMPLETED):
            assert await code_of(report(old, old.run_token, state)) in refused, run_pb2.RunState.Name(state)
        # A resent final report (its answer may have been lost) is answered, and changes nothing.
        assert await code_of(report(old, old.run_token, run_pb2.RUN_STATE_CANCELLED)) == grpc.StatusCode.OK
        assert await code_of(metrics(old, old.run_token)) in refused
        deadline = asyncio.get_running_loop().time() + 10
        while (renewed := await code_of(renew(old, old.run_token))) == grpc.StatusCode.OK:
            assert asyncio.get_running_loop().time() < deadline, "the ended run's grant was never revoked"
            await asyncio.sleep(0.1)
        assert renewed in refused

    # Nothing of the ended run changed; no point reached its metrics.
    assert (await client.GetRun(gateway_pb2.GetRunRequest(name=ended.name))).status == ended.status
    points = await experiments_pb2_grpc.MetricsServiceStub(platform.channel).ListRunMetrics(
        experiments_pb2.ListRunMetricsRequest(name=ended.name)
    )
    assert not points.points
    await client.CancelRun(gateway_pb2.CancelRunRequest(name=live.name))
    await wait_for(client, live.name)
