"""StorageService over gRPC: proto messages to domain values and back, nothing else."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common.timeutil import to_timestamp
from services.storage.domain.broker import StorageBroker
from services.storage.domain.connections import CreateConnection
from services.storage.domain.grants import CreateGrant
from services.storage.domain.locations import normalized
from services.storage.domain.model import (
    Access,
    AccessMode,
    AccessRequest,
    Connection,
    Grant,
    LocalPath,
    Location,
    ObjectMeta,
    PresignedUrls,
)

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
                run_token_sha256=request.run_token_sha256,
            )
        )
        return _grant(grant)

    async def RenewGrant(self, request: storage_pb2.RenewGrantRequest, context: Context) -> storage_pb2.Grant:
        return _grant(await self._broker.renew_grant(request.name, request.run_token))

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

    async def PurgeObjects(
        self, request: storage_pb2.PurgeObjectsRequest, context: Context
    ) -> storage_pb2.PurgeObjectsResponse:
        location = _location(request.location) if request.HasField("location") else None
        purged = await self._broker.purge_objects(request.parent, location, request.force)
        return storage_pb2.PurgeObjectsResponse(purge_count=purged.count, purge_sample=list(purged.sample))

    async def CreateConnection(
        self, request: storage_pb2.CreateConnectionRequest, context: Context
    ) -> storage_pb2.Connection:
        given = request.connection
        connection = await self._broker.create_connection(
            CreateConnection(
                parent=request.parent,
                connection_id=request.connection_id,
                endpoint=given.endpoint,
                region=given.region,
                access_key_id=given.access_key_id,
                secret_access_key=given.secret_access_key,
                request_id=request.request_id,
                presigned_urls=given.presigned_urls,
                replace_secret=request.replace_secret,
            )
        )
        return _connection(connection)

    async def ListConnections(
        self, request: storage_pb2.ListConnectionsRequest, context: Context
    ) -> storage_pb2.ListConnectionsResponse:
        listing = await self._broker.list_connections(request.parent, request.page_size, request.page_token)
        return storage_pb2.ListConnectionsResponse(
            connections=[_connection(c) for c in listing.connections], next_page_token=listing.next_page_token
        )

    async def DeleteConnection(self, request: storage_pb2.DeleteConnectionRequest, context: Context) -> empty_pb2.Empty:
        await self._broker.delete_connection(request.name)
        return empty_pb2.Empty()


def _connection(connection: Connection) -> storage_pb2.Connection:
    # Keys are input only: the answer names the store and a hint of the access key, nothing more.
    return storage_pb2.Connection(
        name=connection.name,
        endpoint=connection.endpoint,
        region=connection.region,
        access_key_hint=connection.access_key_hint,
        create_time=to_timestamp(connection.create_ms),
        presigned_urls=connection.presigned_urls,
    )


def _location(location: run_pb2.ObjectLocation) -> Location:
    """A location as the domain takes it: its prefix in its one spelling (`dlaas.keys`)."""
    return normalized(Location(connection=location.connection, bucket=location.bucket, prefix=location.prefix))


def _location_proto(location: Location) -> run_pb2.ObjectLocation:
    return run_pb2.ObjectLocation(connection=location.connection, bucket=location.bucket, prefix=location.prefix)


def _access(access: Access) -> storage_pb2.ObjectAccess:
    result = storage_pb2.ObjectAccess(location=_location_proto(access.location), mode=_MODE_TO_PROTO[access.mode])
    method = access.method
    if isinstance(method, LocalPath):
        result.local.path = method.path
    elif isinstance(method, PresignedUrls):
        result.presigned.CopyFrom(
            storage_pb2.PresignedAccess(
                endpoint=method.endpoint,
                bucket=method.bucket,
                prefix=method.prefix,
                objects=[
                    storage_pb2.PresignedObject(key=o.key, size_bytes=o.size_bytes, etag=o.etag, url=o.url)
                    for o in method.objects
                ],
                post_url=method.post_url,
                post_fields=dict(method.post_fields),
                expire_time=to_timestamp(method.expire_ms),
            )
        )
    else:
        result.s3.CopyFrom(
            storage_pb2.S3Access(
                endpoint=method.endpoint,
                region=method.region,
                bucket=method.bucket,
                prefix=method.prefix,
                access_key_id=method.access_key_id,
                secret_access_key=method.secret_access_key,
                session_token=method.session_token,
                expire_time=to_timestamp(method.expire_ms),
            )
        )
    return result


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
