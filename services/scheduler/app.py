"""Builds the scheduler service: database, backend, peers, servicer, background loops."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.scheduler.v1 import scheduler_pb2_grpc
from services.common.db import create_engine, migrate
from services.common.server import Service, new_service
from services.scheduler.adapters.db import metadata
from services.scheduler.adapters.local_backend import LocalBackend
from services.scheduler.adapters.nodes import discover
from services.scheduler.adapters.peers import Peers
from services.scheduler.api.servicer import SchedulerServicer
from services.scheduler.runtime.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "scheduler_alembic_version"
SERVICE_NAMES = ["dlaas.scheduler.v1.SchedulerService"]

__all__ = ["build_server", "metadata"]


async def build_server(settings: SchedulerSettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    service = new_service("scheduler", settings, SERVICE_NAMES)
    engine = create_engine(settings.database_url)
    peers = Peers(settings.storage_address, settings.metering_address)
    nodes = discover(settings.gpu_discovery, settings.node_name, settings.virtual_gpus)
    scheduler = Scheduler(
        settings,
        engine,
        LocalBackend(Path(settings.jobs_dir)),
        peers,
        nodes,
        settings.callback_address or f"127.0.0.1:{service.port}",
    )
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(scheduler), service.server)

    async def reconcile_then_dispatch() -> None:
        await scheduler.reconcile()
        await scheduler.dispatch_loop()

    service.background += [reconcile_then_dispatch, scheduler.outbox_loop]

    async def close() -> None:
        await scheduler.close()
        await peers.close()
        await engine.dispose()

    service.on_stop.append(close)
    return service
