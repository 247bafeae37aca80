"""What the end-to-end tests do as a user would: upload data, submit, wait, read results."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dlaas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from dlaas.procs import alive
from dlaas.types.v1 import run_pb2
from services.api_gateway.app import build_server as build_gateway
from services.api_gateway.settings import GatewaySettings
from services.common.server import Service
from services.metering.app import build_server as build_metering
from services.metering.settings import MeteringSettings
from services.scheduler.app import build_server as build_scheduler
from services.scheduler.settings import SchedulerSettings
from services.storage.app import build_server as build_storage
from services.storage.settings import StorageSettings

# ---- tracing: one in-memory exporter for every service started in this process -------------

SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)


# ---- the whole platform, in this process, on ephemeral ports --------------------------------


@dataclass
class Platform:
    """The four real services, started as `dlaas up` would, but inside the test process."""

    metering: Service
    storage: Service
    scheduler: Service
    gateway: Service
    channel: grpc.aio.Channel
    objects_dir: Path
    jobs_dir: Path

    @property
    def client(self) -> gateway_pb2_grpc.TrainingServiceAsyncStub:
        return gateway_pb2_grpc.TrainingServiceStub(self.channel)

    async def stop(self) -> None:
        await self.channel.close()
        for service in (self.gateway, self.scheduler, self.storage, self.metering):
            await service.stop(0)


async def start_platform(databases: Any, root: Path, *, virtual_gpus: int = 2) -> Platform:
    objects_dir, jobs_dir = root / "objects", root / "jobs"
    metering = await build_metering(MeteringSettings(database_url=databases.url("metering")))
    await metering.start()
    storage = await build_storage(StorageSettings(database_url=databases.url("storage"), objects_dir=str(objects_dir)))
    await storage.start()
    scheduler = await build_scheduler(
        SchedulerSettings(
            database_url=databases.url("scheduler"),
            storage_address=storage.address,
            metering_address=metering.address,
            jobs_dir=str(jobs_dir),
            gpu_discovery="virtual",
            virtual_gpus=virtual_gpus,
        )
    )
    await scheduler.start()
    gateway = await build_gateway(
        GatewaySettings(
            database_url=databases.url("gateway"),
            scheduler_address=scheduler.address,
            storage_address=storage.address,
            metering_address=metering.address,
        )
    )
    await gateway.start()
    channel = grpc.aio.insecure_channel(gateway.address)
    return Platform(metering, storage, scheduler, gateway, channel, objects_dir, jobs_dir)


TERMINAL = {run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED}


def manifest(command: str, *, name: str = "test", gpus: int = 1, data_bucket: str | None = None) -> str:
    data = f"data: {{bucket: {data_bucket}}}\n" if data_bucket else ""
    return (
        textwrap.dedent(
            f"""\
        name: {name}
        framework: {{name: python}}
        command: {json.dumps(command)}
        resources: {{gpus: {gpus}}}
        results: {{bucket: results}}
        """
        )
        + data
    )


def pack(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


async def submit(
    client: gateway_pb2_grpc.TrainingServiceAsyncStub, text: str, code: bytes = b"", request_id: str | None = None
) -> gateway_pb2.Run:
    request = gateway_pb2.CreateRunRequest(manifest=text, code_archive=code, request_id=request_id or uuid.uuid4().hex)
    run: gateway_pb2.Run = await client.CreateRun(request)
    return run


async def wait_for(
    client: gateway_pb2_grpc.TrainingServiceAsyncStub, name: str, states: set[int] | None = None, timeout: float = 120
) -> gateway_pb2.Run:
    """Follows the run's WatchRun stream until it reaches one of `states` (default: terminal)."""
    wanted = states or TERMINAL

    async def follow() -> gateway_pb2.Run:
        last = None
        async for run in client.WatchRun(gateway_pb2.WatchRunRequest(name=name)):
            last = run
            if run.status.state in wanted or run.status.state in TERMINAL:
                return run
        assert last is not None
        return last

    return await asyncio.wait_for(follow(), timeout)


def transition_ms(run: gateway_pb2.Run, state: int) -> int:
    times = [t.time.ToMilliseconds() for t in run.status.transitions if t.state == state]
    assert times, f"{run.name} never entered {run_pb2.RunState.Name(state)}"  # type: ignore[arg-type]
    return times[-1]


async def read_logs(client: gateway_pb2_grpc.TrainingServiceAsyncStub, name: str) -> str:
    chunks = [c.data async for c in client.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name))]
    return b"".join(chunks).decode(errors="replace")


def results_dir(grant: gateway_pb2.DataGrant) -> Path:
    return Path(grant.local.path)


def process_gone(pid: int) -> bool:
    """True when no process `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    return not alive(pid)
