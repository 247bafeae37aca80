"""Wires the storage service: migrations, database, object stores, servicer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.auth import service_guard
from services.common.db import create_engine, migrate, session_factory
from services.common.server import Service, new_service
from services.common.timeutil import now_ms
from services.storage.adapters.db import SqlConnectionRepository, SqlGrantRepository
from services.storage.adapters.local_store import LocalObjectStore
from services.storage.adapters.s3_store import S3ObjectStore
from services.storage.adapters.secrets import KeyRing, load_or_create_key_file, parse_key
from services.storage.api.servicer import StorageServicer
from services.storage.domain.broker import StorageBroker
from services.storage.settings import StorageSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "storage_alembic_version"
SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name
# A runner renews its grant with its run token (checked by the broker), not the service token.
RUNNER_METHODS = frozenset({f"/{SERVICE_NAME}/RenewGrant"})


async def build_server(settings: StorageSettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    service = new_service(
        "storage", settings, [SERVICE_NAME], service_guard(settings, "storage", RUNNER_METHODS), mutual_tls=True
    )
    engine = create_engine(settings.database_url)
    service.on_stop.append(engine.dispose)
    keys = await asyncio.to_thread(key_ring, settings)
    sessions = session_factory(engine)
    broker = StorageBroker(
        SqlGrantRepository(sessions, keys),
        LocalObjectStore(Path(settings.objects_dir)),
        max_grant_ttl_s=settings.max_grant_ttl_s,
        clock=now_ms,
        connections=SqlConnectionRepository(sessions, keys),
        open_store=lambda connection: S3ObjectStore(connection, session_s=settings.grant_session_s),
    )
    storage_pb2_grpc.add_StorageServiceServicer_to_server(StorageServicer(broker), service.server)
    return service


def key_ring(settings: StorageSettings) -> KeyRing:
    """The sealing keys: the configured key (or the key file's), and the previous ones for opening."""
    if settings.encryption_key is not None:
        current = parse_key(settings.encryption_key.get_secret_value())
    else:
        current = load_or_create_key_file(settings.key_file())
    return KeyRing(current, [parse_key(key.get_secret_value()) for key in settings.previous_encryption_keys])
