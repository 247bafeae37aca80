"""Builds the scheduler service: database, backend, peers, servicer, background loops."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.scheduler.v1 import scheduler_pb2_grpc
from services.common.auth import service_guard
from services.common.db import create_engine, migrate
from services.common.server import Service, new_service
from services.scheduler.adapters.backend import Backend
from services.scheduler.adapters.db import metadata
from services.scheduler.adapters.local_backend import LocalBackend
from services.scheduler.adapters.nodes import discover
from services.scheduler.adapters.peers import Peers
from services.scheduler.api.servicer import SchedulerServicer
from services.scheduler.domain.model import Node
from services.scheduler.runtime.scheduler import Scheduler
from services.scheduler.settings import SchedulerSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "scheduler_alembic_version"
SERVICE_NAMES = ["dlaas.scheduler.v1.SchedulerService"]
# Called by runners, which hold their run's token (checked by the method) and no service token.
RUNNER_METHODS = frozenset(
    {"/dlaas.scheduler.v1.SchedulerService/ReportRunProgress", "/dlaas.scheduler.v1.SchedulerService/ReportRunMetrics"}
)

__all__ = ["build_server", "metadata"]


def runner_port(settings: SchedulerSettings, port: int) -> int:
    """Where runners report: the service's port, or its plaintext port under mutual TLS."""
    if settings.credentials().tls is not None and settings.plain_port is not None:
        return settings.plain_port
    return port


async def build_server(settings: SchedulerSettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    service = new_service(
        "scheduler", settings, SERVICE_NAMES, service_guard(settings, "scheduler", RUNNER_METHODS), mutual_tls=True
    )
    engine = create_engine(settings.database_url)
    peers = Peers(settings.storage_address, settings.metering_address, settings.credentials())
    backend, nodes = await _backend(settings)
    scheduler = Scheduler(
        settings,
        engine,
        backend,
        peers,
        nodes,
        settings.callback_address or f"127.0.0.1:{runner_port(settings, service.port)}",
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


async def _backend(settings: SchedulerSettings) -> tuple[Backend, list[Node]]:
    if settings.backend == "kubernetes":
        from services.scheduler.adapters.kubernetes_backend import KubernetesBackend, KubernetesOptions, api_client

        options = KubernetesOptions(
            namespace=settings.kubernetes_namespace,
            scheduler_name=settings.kubernetes_scheduler_name,
            images=settings.kubernetes_images,
            termination_grace_s=settings.kubernetes_termination_grace_s,
        )
        kube = KubernetesBackend(await asyncio.to_thread(api_client, settings.kubernetes_api_url), options)
        return kube, await kube.list_nodes()
    return LocalBackend(Path(settings.jobs_dir)), discover(
        settings.gpu_discovery, settings.node_name, settings.virtual_gpus
    )
