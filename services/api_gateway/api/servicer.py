"""TrainingService: proto ↔ application calls, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from dlaas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2
from dlaas.storage.v1 import storage_pb2
from services.api_gateway.api.auth import authenticate
from services.api_gateway.runtime.accounts import Accounts
from services.api_gateway.runtime.gateway import Gateway
from services.common.errors import InvalidArgument

Context = grpc.aio.ServicerContext[Any, Any]

_MODES = {
    gateway_pb2.DATA_ACCESS_MODE_READ: storage_pb2.ACCESS_MODE_READ,
    gateway_pb2.DATA_ACCESS_MODE_WRITE: storage_pb2.ACCESS_MODE_WRITE,
}


def public_run(run: scheduler_pb2.Run) -> gateway_pb2.Run:
    return gateway_pb2.Run(name=run.name, spec=run.spec, status=run.status, create_time=run.create_time)


def data_grant(grant: storage_pb2.Grant) -> gateway_pb2.DataGrant:
    access = grant.accesses[0]
    mode = {v: k for k, v in _MODES.items()}[access.mode]
    result = gateway_pb2.DataGrant(location=access.location, mode=mode, expire_time=grant.expire_time)
    method = access.WhichOneof("method")
    if method == "local":
        result.local.path = access.local.path
    elif method == "s3":
        s3 = access.s3
        result.s3.CopyFrom(
            gateway_pb2.S3DataAccess(
                endpoint=s3.endpoint,
                region=s3.region,
                bucket=s3.bucket,
                prefix=s3.prefix,
                access_key_id=s3.access_key_id,
                secret_access_key=s3.secret_access_key,
                session_token=s3.session_token,
            )
        )
        # These credentials stop before the grant does when it outlasts one STS session.
        result.expire_time.CopyFrom(s3.expire_time)
    elif method == "presigned":
        signed = access.presigned
        result.presigned.CopyFrom(
            gateway_pb2.PresignedDataAccess(
                endpoint=signed.endpoint,
                bucket=signed.bucket,
                prefix=signed.prefix,
                objects=[
                    gateway_pb2.PresignedDataObject(key=o.key, size_bytes=o.size_bytes, etag=o.etag, url=o.url)
                    for o in signed.objects
                ],
                post_url=signed.post_url,
                post_fields=dict(signed.post_fields),
            )
        )
        result.expire_time.CopyFrom(signed.expire_time)
    return result


class TrainingServicer(gateway_pb2_grpc.TrainingServiceServicer):
    def __init__(self, gateway: Gateway, accounts: Accounts):
        self.gateway = gateway
        self.accounts = accounts

    async def CreateRun(self, request: gateway_pb2.CreateRunRequest, context: Context) -> gateway_pb2.Run:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        if request.validate_only:
            parsed = self.gateway.parse(request.manifest)
            return gateway_pb2.Run(spec=parsed.spec)
        run = await self.gateway.create_run(
            who.account,
            who.tier,
            request.manifest,
            request.code_archive,
            request.request_id,
            admit=lambda: self.accounts.admit_submission(who),
        )
        return public_run(run)

    async def GetRun(self, request: gateway_pb2.GetRunRequest, context: Context) -> gateway_pb2.Run:
        who = authenticate(context)
        return public_run(await self.gateway.get_run(self.gateway.run_name(who.account, request.name)))

    async def ListRuns(self, request: gateway_pb2.ListRunsRequest, context: Context) -> gateway_pb2.ListRunsResponse:
        who = authenticate(context)
        parent = self.gateway.account_parent(who.account, request.parent)
        response = await self.gateway.list_runs(parent, request.page_size, request.page_token)
        return gateway_pb2.ListRunsResponse(
            runs=[public_run(r) for r in response.runs], next_page_token=response.next_page_token
        )

    async def CancelRun(self, request: gateway_pb2.CancelRunRequest, context: Context) -> gateway_pb2.Run:
        who = authenticate(context)
        return public_run(await self.gateway.cancel_run(self.gateway.run_name(who.account, request.name)))

    async def WatchRun(self, request: gateway_pb2.WatchRunRequest, context: Context) -> AsyncIterator[gateway_pb2.Run]:
        who = authenticate(context)
        async for run in self.gateway.watch_run(self.gateway.run_name(who.account, request.name)):
            yield public_run(run)

    async def StreamRunLogs(
        self, request: gateway_pb2.StreamRunLogsRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.StreamRunLogsResponse]:
        who = authenticate(context)
        async for chunk in self.gateway.run_logs(self.gateway.run_name(who.account, request.name), request.follow):
            yield gateway_pb2.StreamRunLogsResponse(data=chunk.data)

    async def CreateDataGrant(
        self, request: gateway_pb2.CreateDataGrantRequest, context: Context
    ) -> gateway_pb2.DataGrant:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        if request.mode not in _MODES:
            raise InvalidArgument.field("mode", "must be DATA_ACCESS_MODE_READ or DATA_ACCESS_MODE_WRITE")
        ttl_s = request.ttl.seconds if request.HasField("ttl") and request.ttl.seconds > 0 else 3600
        grant = await self.gateway.grant(who.account, request.location, _MODES[request.mode], ttl_s)
        return data_grant(grant)

    async def CreateRunResultsGrant(
        self, request: gateway_pb2.CreateRunResultsGrantRequest, context: Context
    ) -> gateway_pb2.DataGrant:
        who = authenticate(context)
        name = self.gateway.run_name(who.account, request.name)
        return data_grant(await self.gateway.results_grant(who.account, name))

    async def CreateRunCodeGrant(
        self, request: gateway_pb2.CreateRunCodeGrantRequest, context: Context
    ) -> gateway_pb2.DataGrant:
        who = authenticate(context)
        name = self.gateway.run_name(who.account, request.name)
        return data_grant(await self.gateway.code_grant(who.account, name))

    async def PurgeObjects(
        self, request: gateway_pb2.PurgeObjectsRequest, context: Context
    ) -> gateway_pb2.PurgeObjectsResponse:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        purged = await self.gateway.purge_objects(who.account, request.location, request.force)
        return gateway_pb2.PurgeObjectsResponse(purge_count=purged.purge_count, purge_sample=purged.purge_sample)

    async def ListObjects(
        self, request: gateway_pb2.ListObjectsRequest, context: Context
    ) -> gateway_pb2.ListObjectsResponse:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        response = await self.gateway.list_objects(who.account, request.location, request.page_size, request.page_token)
        return gateway_pb2.ListObjectsResponse(
            objects=[
                gateway_pb2.DataObject(key=o.key, size_bytes=o.size_bytes, sha256=o.sha256, update_time=o.update_time)
                for o in response.objects
            ],
            next_page_token=response.next_page_token,
        )

    async def ListUsageRecords(
        self, request: gateway_pb2.ListUsageRecordsRequest, context: Context
    ) -> gateway_pb2.ListUsageRecordsResponse:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        response = await self.gateway.usage(who.account, request.run, request.page_size, request.page_token)
        return gateway_pb2.ListUsageRecordsResponse(
            usage_records=[
                gateway_pb2.UsageRecord(
                    run=r.run,
                    attempt=r.attempt,
                    gpus=r.gpus,
                    gpu_type=r.gpu_type,
                    start_time=r.start_time,
                    end_time=r.end_time if r.HasField("end_time") else None,
                    gpu_milliseconds=r.gpu_milliseconds,
                    accruing=r.accruing,
                )
                for r in response.usage_records
            ],
            next_page_token=response.next_page_token,
            total_gpu_milliseconds=response.total_gpu_milliseconds,
        )
