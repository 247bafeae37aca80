"""Builds the gateway service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.gateway.v1 import gateway_pb2_grpc
from services.api_gateway.adapters.db import SpecRepository, metadata
from services.api_gateway.adapters.peers import Peers
from services.api_gateway.api.auth import Caller
from services.api_gateway.api.servicer import TrainingServicer
from services.api_gateway.runtime.gateway import Gateway
from services.api_gateway.settings import GatewaySettings
from services.common.db import create_engine, migrate
from services.common.server import Service, new_service

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "gateway_alembic_version"
SERVICE_NAMES = ["dlaas.gateway.v1.TrainingService"]

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

    async def close() -> None:
        await peers.close()
        await engine.dispose()

    service.on_stop.append(close)
    return service
