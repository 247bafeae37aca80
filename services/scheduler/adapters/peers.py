"""Clients of the services the scheduler calls: storage (grants) and metering (usage events)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.transfer_s3 import PresignedGet, S3Location
from dlaas.types.v1 import run_pb2
from services.common.clients import open_channel


class Peers:
    def __init__(self, storage_address: str, metering_address: str):
        self._storage_channel = open_channel(storage_address)
        self._metering_channel = open_channel(metering_address)
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
    ) -> storage_pb2.Grant:
        accesses = [storage_pb2.AccessRequest(location=loc, mode=storage_pb2.ACCESS_MODE_READ) for loc in reads]
        accesses.append(storage_pb2.AccessRequest(location=write, mode=storage_pb2.ACCESS_MODE_WRITE))
        request = storage_pb2.CreateGrantRequest(
            parent=f"accounts/{account}",
            run=run,
            accesses=accesses,
            ttl=Duration(seconds=ttl_s),
            request_id=f"{run}/attempts/{attempt}",
        )
        return await self.storage.CreateGrant(request, timeout=10)

    async def revoke(self, grant_name: str) -> None:
        await self.storage.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant_name), timeout=10)

    async def monthly_usage(self, account: str) -> metering_pb2.MonthlyUsage:
        request = metering_pb2.GetMonthlyUsageRequest(account=f"accounts/{account}")
        return await self.metering.GetMonthlyUsage(request, timeout=2)

    async def record(self, events: list[metering_pb2.UsageEvent]) -> metering_pb2.RecordUsageEventsResponse:
        return await self.metering.RecordUsageEvents(metering_pb2.RecordUsageEventsRequest(events=events), timeout=10)


def runner_access(access: storage_pb2.ObjectAccess) -> tuple[Path | None, S3Location | None]:
    """A grant's access as the runner's config takes it: a local path, or an S3 location."""
    method = access.WhichOneof("method")
    if method == "presigned":
        signed = access.presigned
        return None, S3Location(
            endpoint=signed.endpoint,
            region="",
            bucket=signed.bucket,
            prefix=signed.prefix,
            expire_ms=signed.expire_time.ToMilliseconds(),
            presigned=True,
            objects=tuple(PresignedGet(o.key, o.size_bytes, o.etag, o.url) for o in signed.objects),
            post_url=signed.post_url,
            post_fields=tuple(sorted(signed.post_fields.items())),
        )
    if method == "s3":
        s3 = access.s3
        return None, S3Location(
            endpoint=s3.endpoint,
            region=s3.region,
            bucket=s3.bucket,
            prefix=s3.prefix,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
            session_token=s3.session_token,
            expire_ms=s3.expire_time.ToMilliseconds(),
        )
    return Path(access.local.path), None
