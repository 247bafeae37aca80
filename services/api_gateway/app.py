"""Builds the gateway service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.gateway.v1 import cluster_pb2_grpc, gateway_pb2_grpc
from services.api_gateway.adapters.db import SpecRepository, metadata
from services.api_gateway.adapters.peers import Peers
from services.api_gateway.api import connections_servicer
from services.api_gateway.api.auth import Caller
from services.api_gateway.api.billing_servicer import add_billing_service
from services.api_gateway.api.cluster_servicer import AdminServicer, ClusterServicer
from services.api_gateway.api.servicer import TrainingServicer
from services.api_gateway.runtime.cluster import Cluster
from services.api_gateway.runtime.gateway import Gateway
from services.api_gateway.settings import GatewaySettings
from services.common.db import create_engine, migrate
from services.common.server import Service, new_service

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "gateway_alembic_version"
SERVICE_NAMES = [
    "dlaas.gateway.v1.TrainingService",
    "dlaas.gateway.v1.BillingService",
    "dlaas.gateway.v1.ClusterService",
    "dlaas.gateway.v1.AdminService",
    "dlaas.gateway.v1.ConnectionService",
]

__all__ = ["build_server", "metadata"]


async def build_server(settings: GatewaySettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    service = new_service("gateway", settings, SERVICE_NAMES)
    engine = create_engine(settings.database_url)
    peers = Peers(settings.scheduler_address, settings.storage_address, settings.metering_address)
    gateway = Gateway(settings, SpecRepository(engine), peers)
    caller = Caller(settings.default_account, settings.default_tier)
    gateway_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(gateway, caller), service.server)
    add_billing_service(service.server, gateway, caller)
    cluster = Cluster(peers)
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterServicer(cluster, gateway, caller), service.server)
    cluster_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(cluster, caller), service.server)
    connections_servicer.register(service.server, gateway, peers, caller)

    async def close() -> None:
        await peers.close()
        await engine.dispose()

    service.on_stop.append(close)
    return service
