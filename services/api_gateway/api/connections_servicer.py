"""ConnectionService: the caller's object-store connections, relayed to the storage service.

Secrets pass through to storage, which seals them; no answer carries them back.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from dlaas.gateway.v1 import connections_pb2, connections_pb2_grpc
from dlaas.storage.v1 import storage_pb2
from services.api_gateway.adapters.peers import Peers
from services.api_gateway.api.auth import authenticate
from services.api_gateway.runtime.gateway import Gateway
from services.common import names
from services.common.errors import NotFound

Context = grpc.aio.ServicerContext[Any, Any]
TIMEOUT_S = 30


def public_connection(connection: storage_pb2.Connection) -> connections_pb2.Connection:
    return connections_pb2.Connection(
        name=connection.name,
        endpoint=connection.endpoint,
        region=connection.region,
        access_key_hint=connection.access_key_hint,
        create_time=connection.create_time,
        presigned_urls=connection.presigned_urls,
    )


class ConnectionServicer(connections_pb2_grpc.ConnectionServiceServicer):
    def __init__(self, gateway: Gateway, peers: Peers):
        self.gateway = gateway
        self.peers = peers

    async def CreateConnection(
        self, request: connections_pb2.CreateConnectionRequest, context: Context
    ) -> connections_pb2.Connection:
        who = authenticate(context)
        given = request.connection
        created = await self.peers.storage.CreateConnection(
            storage_pb2.CreateConnectionRequest(
                parent=self.gateway.account_parent(who.account, request.parent),
                connection_id=request.connection_id,
                connection=storage_pb2.Connection(
                    endpoint=given.endpoint,
                    region=given.region,
                    access_key_id=given.access_key_id,
                    secret_access_key=given.secret_access_key,
                    presigned_urls=given.presigned_urls,
                ),
                request_id=request.request_id,
            ),
            timeout=TIMEOUT_S,
        )
        return public_connection(created)

    async def ListConnections(
        self, request: connections_pb2.ListConnectionsRequest, context: Context
    ) -> connections_pb2.ListConnectionsResponse:
        who = authenticate(context)
        listed = await self.peers.storage.ListConnections(
            storage_pb2.ListConnectionsRequest(
                parent=self.gateway.account_parent(who.account, request.parent),
                page_size=request.page_size,
                page_token=request.page_token,
            ),
            timeout=TIMEOUT_S,
        )
        return connections_pb2.ListConnectionsResponse(
            connections=[public_connection(c) for c in listed.connections], next_page_token=listed.next_page_token
        )

    async def DeleteConnection(
        self, request: connections_pb2.DeleteConnectionRequest, context: Context
    ) -> empty_pb2.Empty:
        who = authenticate(context)
        name = request.name
        if names.is_id(name):
            name = f"{names.account_name(who.account)}/connections/{name}"
        elif not name.startswith(names.account_name(who.account) + "/connections/"):
            raise NotFound(f"connection {name[:200]} not found")
        await self.peers.storage.DeleteConnection(storage_pb2.DeleteConnectionRequest(name=name), timeout=TIMEOUT_S)
        return empty_pb2.Empty()


def register(server: grpc.aio.Server, gateway: Gateway, peers: Peers) -> None:
    connections_pb2_grpc.add_ConnectionServiceServicer_to_server(ConnectionServicer(gateway, peers), server)
