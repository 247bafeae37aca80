"""Mutual TLS between the services: a whole run goes through with every internal hop on TLS with
client certificates; a client without a valid certificate of the platform's CA (none, another CA's,
an expired one) gets nowhere, even with the service token; runners report on the scheduler's
plaintext port with their run token."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common.clients import open_channel
from services.common.settings import ServiceCredentials, TlsFiles
from tests.conftest import DatabaseFactory
from tests.support import SERVICE_TOKEN, free_port, manifest, service_channel, start_platform, submit, wait_for
from tests.tls import Authority

pytestmark = pytest.mark.e2e


async def test_a_run_completes_with_mutual_tls_between_services_and_strangers_are_refused(
    sqlite_databases: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    platform_ca = Authority.new()
    files = platform_ca.issue(tmp_path / "tls")
    monkeypatch.setenv("DLAAS_TLS_CERT_FILE", str(files["cert"]))
    monkeypatch.setenv("DLAAS_TLS_KEY_FILE", str(files["key"]))
    monkeypatch.setenv("DLAAS_TLS_CA_FILE", str(files["ca"]))
    scheduler_plain = free_port()
    monkeypatch.setenv("DLAAS_SCHEDULER_PLAIN_PORT", str(scheduler_plain))
    storage_plain = free_port()
    monkeypatch.setenv("DLAAS_STORAGE_PLAIN_PORT", str(storage_plain))
    monkeypatch.setenv("DLAAS_SCHEDULER_RUNNER_STORAGE_ADDRESS", f"127.0.0.1:{storage_plain}")
    platform = await start_platform(sqlite_databases, tmp_path)
    try:
        run = await submit(platform.client, manifest("python -c 'print(42)'"))
        done = await wait_for(platform.client, run.name)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)

        ours = ServiceCredentials(
            SecretStr(SERVICE_TOKEN), TlsFiles(str(files["cert"]), str(files["key"]), str(files["ca"]))
        )
        request = metering_pb2.ListUsageRecordsRequest(parent="accounts/default")
        async with open_channel(platform.metering.address, ours) as channel:
            records = await metering_pb2_grpc.MeteringServiceStub(channel).ListUsageRecords(request)
            assert [r.run for r in records.usage_records] == [run.name]

        # The service token over plaintext, or TLS without a client certificate: no connection (our
        # channels wait for one until the deadline).
        async with service_channel(platform.metering.address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await metering_pb2_grpc.MeteringServiceStub(plaintext).ListUsageRecords(request, timeout=3)
            assert refused.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        # The scheduler's plaintext port (runners' callbacks, probes) serves nothing else, even with
        # the token.
        async with service_channel(f"127.0.0.1:{scheduler_plain}") as plain_port:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await scheduler_pb2_grpc.SchedulerServiceStub(plain_port).ListRuns(
                    scheduler_pb2.ListRunsRequest(parent="accounts/default"), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # TLS that trusts the platform's CA, showing no client certificate, one of another CA, or
        # an expired one of the platform's CA: the handshake fails.
        strangers = {
            "another CA's": Authority.new("another CA").issue(tmp_path / "stranger"),
            "an expired": platform_ca.issue(tmp_path / "expired", expired=True),
        }
        strangers["the platform's"] = files  # the control: the same call with a good certificate goes through
        clients = {"no": grpc.ssl_channel_credentials(root_certificates=files["ca"].read_bytes())} | {
            what: grpc.ssl_channel_credentials(
                root_certificates=files["ca"].read_bytes(),
                private_key=stranger["key"].read_bytes(),
                certificate_chain=stranger["cert"].read_bytes(),
            )
            for what, stranger in strangers.items()
        }
        for what, client in clients.items():
            for address in (platform.metering.address, platform.scheduler.address, platform.storage.address):
                async with grpc.aio.secure_channel(address, client) as channel:
                    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if what == "the platform's":
                        assert (await check).status == health_pb2.HealthCheckResponse.SERVING
                        continue
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await check
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (what, address, refused.value)
    finally:
        await platform.stop()
