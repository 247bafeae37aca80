"""StorageService over gRPC: proto messages to domain values and back, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common.timeutil import to_timestamp
from services.storage.domain.broker import StorageBroker
from services.storage.domain.grants import CreateGrant
from services.storage.domain.model import Access, AccessMode, AccessRequest, Grant, Location, ObjectMeta

Context = grpc.aio.ServicerContext[Any, Any]

_MODE_FROM_PROTO = {
    storage_pb2.ACCESS_MODE_READ: AccessMode.READ,
    storage_pb2.ACCESS_MODE_WRITE: AccessMode.WRITE,
}
_MODE_TO_PROTO = {mode: value for value, mode in _MODE_FROM_PROTO.items()}


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, broker: StorageBroker):
        self._broker = broker

    async def CreateGrant(self, request: storage_pb2.CreateGrantRequest, context: Context) -> storage_pb2.Grant:
        grant = await self._broker.create_grant(
            CreateGrant(
                parent=request.parent,
                run=request.run,
                accesses=tuple(
                    AccessRequest(
                        location=_location(access.location) if access.HasField("location") else None,
                        mode=_MODE_FROM_PROTO.get(access.mode),
                    )
                    for access in request.accesses
                ),
                ttl_ms=request.ttl.ToMilliseconds() if request.HasField("ttl") else None,
                request_id=request.request_id,
            )
        )
        return _grant(grant)

    async def RevokeGrant(self, request: storage_pb2.RevokeGrantRequest, context: Context) -> storage_pb2.Grant:
        return _grant(await self._broker.revoke_grant(request.name))

    async def WriteObject(self, request: storage_pb2.WriteObjectRequest, context: Context) -> storage_pb2.ObjectInfo:
        location = _location(request.location) if request.HasField("location") else None
        return _object(await self._broker.write_object(request.parent, location, request.data))

    async def ListObjects(
        self, request: storage_pb2.ListObjectsRequest, context: Context
    ) -> storage_pb2.ListObjectsResponse:
        location = _location(request.location) if request.HasField("location") else None
        listing = await self._broker.list_objects(request.parent, location, request.page_size, request.page_token)
        return storage_pb2.ListObjectsResponse(
            objects=[_object(meta) for meta in listing.objects], next_page_token=listing.next_page_token
        )


def _location(location: run_pb2.ObjectLocation) -> Location:
    return Location(connection=location.connection, bucket=location.bucket, prefix=location.prefix)


def _location_proto(location: Location) -> run_pb2.ObjectLocation:
    return run_pb2.ObjectLocation(connection=location.connection, bucket=location.bucket, prefix=location.prefix)


def _access(access: Access) -> storage_pb2.ObjectAccess:
    return storage_pb2.ObjectAccess(
        location=_location_proto(access.location),
        mode=_MODE_TO_PROTO[access.mode],
        local=storage_pb2.LocalAccess(path=access.method.path),
    )


def _grant(grant: Grant) -> storage_pb2.Grant:
    return storage_pb2.Grant(
        name=grant.name,
        run=grant.run,
        accesses=[_access(access) for access in grant.accesses],
        expire_time=to_timestamp(grant.expire_ms),
        revoke_time=to_timestamp(grant.revoke_ms),
    )


def _object(meta: ObjectMeta) -> storage_pb2.ObjectInfo:
    return storage_pb2.ObjectInfo(
        bucket=meta.bucket,
        key=meta.key,
        size_bytes=meta.size_bytes,
        sha256=meta.sha256,
        update_time=to_timestamp(meta.update_ms),
    )
