"""Builds the gateway service."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dlaas.gateway.v1 import accounts_pb2_grpc, cluster_pb2_grpc, gateway_pb2_grpc
from services.api_gateway.adapters.accounts import AccountRepository
from services.api_gateway.adapters.db import SpecRepository, metadata
from services.api_gateway.adapters.experiments_db import ExperimentRepository, MetricRepository
from services.api_gateway.adapters.peers import Peers
from services.api_gateway.api import connections_servicer, experiments_servicer
from services.api_gateway.api.accounts_servicer import AccountServicer
from services.api_gateway.api.auth import caller_headers, gateway_guard
from services.api_gateway.api.billing_servicer import add_billing_service
from services.api_gateway.api.cluster_servicer import AdminServicer, ClusterServicer
from services.api_gateway.api.servicer import TrainingServicer
from services.api_gateway.runtime.accounts import Accounts
from services.api_gateway.runtime.cluster import Cluster
from services.api_gateway.runtime.experiments import Experiments
from services.api_gateway.runtime.gateway import Gateway
from services.api_gateway.runtime.metrics import Metrics
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
    "dlaas.gateway.v1.AccountService",
    "dlaas.gateway.v1.ExperimentService",
    "dlaas.gateway.v1.MetricsService",
]

__all__ = ["build_server", "metadata"]


async def build_server(settings: GatewaySettings) -> Service:
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, settings.database_url, MIGRATIONS_DIR, VERSION_TABLE)
    engine = create_engine(settings.database_url)
    peers = Peers(
        settings.scheduler_address,
        settings.storage_address,
        settings.metering_address,
        settings.credentials(),
        caller_headers,
    )
    accounts = Accounts(settings, AccountRepository(engine), peers)
    await accounts.bootstrap()
    service = new_service("gateway", settings, SERVICE_NAMES, gateway_guard(accounts))
    gateway = Gateway(settings, SpecRepository(engine), peers)
    accounts_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(accounts), service.server)
    gateway_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(gateway, accounts), service.server)
    add_billing_service(service.server, gateway)
    cluster = Cluster(peers)
    cluster_pb2_grpc.add_ClusterServiceServicer_to_server(ClusterServicer(cluster, gateway), service.server)
    cluster_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(cluster, accounts), service.server)
    connections_servicer.register(service.server, gateway, peers)
    metrics = Metrics(MetricRepository(engine), peers)
    experiments = Experiments(gateway, ExperimentRepository(engine), MetricRepository(engine))
    metrics.on_points.append(experiments.wake)
    experiments_servicer.register(service.server, experiments, metrics, gateway)
    service.background += [metrics.ingest_loop, experiments.controller_loop]

    async def close() -> None:
        await peers.close()
        await engine.dispose()

    service.on_stop.append(close)
    return service
