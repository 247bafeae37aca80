"""Wires the storage service: migrations, database, object stores, servicer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.db import create_engine, migrate, session_factory
from services.common.server import Service, new_service
from services.common.timeutil import now_ms
from services.storage.adapters.db import SqlGrantRepository
from services.storage.adapters.local_store import LocalObjectStore
from services.storage.api.servicer import StorageServicer
from services.storage.domain.broker import StorageBroker
from services.storage.domain.model import PLATFORM_CONNECTION
from services.storage.settings import StorageSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "storage_alembic_version"
SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name


async def build_server(settings: StorageSettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    service = new_service("storage", settings, [SERVICE_NAME])
    engine = create_engine(settings.database_url)
    service.on_stop.append(engine.dispose)
    broker = StorageBroker(
        SqlGrantRepository(session_factory(engine)),
        {PLATFORM_CONNECTION: LocalObjectStore(Path(settings.objects_dir))},
        max_grant_ttl_s=settings.max_grant_ttl_s,
        clock=now_ms,
    )
    storage_pb2_grpc.add_StorageServiceServicer_to_server(StorageServicer(broker), service.server)
    return service
