"""Accounts and API keys through the real gateway: who may call, as whom, how often; and the
service credential between our services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import SecretStr

from dlaas.gateway.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    cluster_pb2,
    cluster_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from dlaas.runner.config import RunnerConfig
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.api_gateway.settings import RateLimit
from services.common.auth import MissingServiceToken
from services.common.clients import open_channel
from services.common.settings import ServiceCredentials
from services.scheduler.app import build_server as build_scheduler
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


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_every_call_needs_a_valid_key_and_errors_never_echo_it(platform: Platform) -> None:
    address = platform.gateway.address
    stranger = platform.key[:-4] + ("AAAA" if not platform.key.endswith("AAAA") else "BBBB")  # right prefix, wrong key
    async with grpc.aio.insecure_channel(address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await gateway_pb2_grpc.TrainingServiceStub(anonymous).ListRuns(gateway_pb2.ListRunsRequest())
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "DLAAS_API_KEY" in (missing.value.details() or "")
    for key in (stranger, "not-a-key", "dlaas_zzzzzzzz_" + "x" * 43):
        async with gateway_channel(address, key) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway_pb2_grpc.TrainingServiceStub(channel).ListRuns(gateway_pb2.ListRunsRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert key not in str(refused.value) and key[-20:] not in str(refused.value)


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
        accepted = [await submit(platform.client, manifest("true", gpus=0)) for _ in range(2)]
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await submit(platform.client, manifest("true", gpus=0))
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
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
