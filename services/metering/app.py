"""Builds the metering service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.metering.v1 import metering_pb2_grpc
from services.common.auth import service_guard
from services.common.db import create_engine, migrate
from services.common.server import Service, new_service
from services.metering.adapters.db import UsageRepository
from services.metering.api.servicer import MeteringServicer
from services.metering.domain.rating import parse_prices
from services.metering.settings import MeteringSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "metering_alembic_version"
SERVICE_NAMES = ["dlaas.metering.v1.MeteringService"]


async def build_server(settings: MeteringSettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    service = new_service("metering", settings, SERVICE_NAMES, service_guard(settings, "metering"), mutual_tls=True)
    engine = create_engine(settings.database_url)
    repository = UsageRepository(engine)
    await repository.seed_prices(parse_prices(settings.prices))
    servicer = MeteringServicer(repository, settings.currency)
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, service.server)
    service.on_stop.append(engine.dispose)
    return service
