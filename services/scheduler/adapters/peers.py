"""Clients of the services the scheduler calls: storage (grants) and metering (usage events)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from dlaas.runner.grant import s3_location
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.transfer_s3 import S3Location
from dlaas.types.v1 import run_pb2
from services.common import names
from services.common.clients import open_channel
from services.common.settings import ServiceCredentials


class Peers:
    def __init__(self, storage_address: str, metering_address: str, credentials: ServiceCredentials):
        self._storage_channel = open_channel(storage_address, credentials)
        self._metering_channel = open_channel(metering_address, credentials)
        self.storage = storage_pb2_grpc.StorageServiceStub(self._storage_channel)
        self.metering = metering_pb2_grpc.MeteringServiceStub(self._metering_channel)

    async def close(self) -> None:
        await self._storage_channel.close()
        await self._metering_channel.close()

    async def grant_run(
        self,
        account: str,
        run: str,
        attempt: int,
        reads: list[run_pb2.ObjectLocation],
        write: run_pb2.ObjectLocation,
        ttl_s: int,
        run_token_sha256: str = "",
    ) -> storage_pb2.Grant:
        accesses = [storage_pb2.AccessRequest(location=loc, mode=storage_pb2.ACCESS_MODE_READ) for loc in reads]
        accesses.append(storage_pb2.AccessRequest(location=write, mode=storage_pb2.ACCESS_MODE_WRITE))
        request = storage_pb2.CreateGrantRequest(
            parent=f"accounts/{account}",
            run=run,
            accesses=accesses,
            ttl=Duration(seconds=ttl_s),
            request_id=f"{run}/attempts/{attempt}",
            run_token_sha256=run_token_sha256,
        )
        return await self.storage.CreateGrant(request, timeout=10)

    async def revoke(self, grant_name: str) -> None:
        await self.storage.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant_name), timeout=10)

    async def monthly_usage(self, account: str) -> metering_pb2.MonthlyUsage:
        request = metering_pb2.GetMonthlyUsageRequest(account=names.account_name(account))
        return await self.metering.GetMonthlyUsage(request, timeout=2)

    async def record(self, events: list[metering_pb2.UsageEvent]) -> metering_pb2.RecordUsageEventsResponse:
        return await self.metering.RecordUsageEvents(metering_pb2.RecordUsageEventsRequest(events=events), timeout=10)


def runner_access(access: storage_pb2.ObjectAccess) -> tuple[Path | None, S3Location | None]:
    """A grant's access as the runner's config takes it: a local path, or an S3 location."""
    location = s3_location(access)
    return (Path(access.local.path), None) if location is None else (None, location)
