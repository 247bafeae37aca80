"""kill -9 of the scheduler while runs are RUNNING and while one is UPLOADING: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dlaas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common.server import Service
from services.metering.app import build_server as build_metering
from services.metering.settings import MeteringSettings
from services.storage.app import build_server as build_storage
from services.storage.settings import StorageSettings
from tests.conftest import DatabaseFactory
from tests.support import (
    ADMIN_KEY,
    ServiceProcess,
    assert_billed_exactly,
    closed_usage_records,
    create_account,
    free_port,
    gateway_channel,
    manifest,
    pack,
    start_gateway,
    submit,
    wait_for,
)

pytestmark = pytest.mark.e2e


@dataclass
class CrashablePlatform:
    scheduler: ServiceProcess
    services: list[Service]
    channel: grpc.aio.Channel

    @property
    def client(self) -> gateway_pb2_grpc.TrainingServiceAsyncStub:
        return gateway_pb2_grpc.TrainingServiceStub(self.channel)


@pytest.fixture
async def crashable(databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[CrashablePlatform]:
    metering = await build_metering(MeteringSettings(database_url=databases.url("metering")))
    await metering.start()
    storage = await build_storage(
        StorageSettings(database_url=databases.url("storage"), objects_dir=str(tmp_path / "objects"))
    )
    await storage.start()
    port = free_port()
    scheduler = ServiceProcess(
        "services.scheduler",
        {
            "DLAAS_SCHEDULER_PORT": str(port),
            "DLAAS_SCHEDULER_DATABASE_URL": databases.url("scheduler"),
            "DLAAS_SCHEDULER_STORAGE_ADDRESS": storage.address,
            "DLAAS_SCHEDULER_METERING_ADDRESS": metering.address,
            "DLAAS_SCHEDULER_JOBS_DIR": str(tmp_path / "jobs"),
            "DLAAS_SCHEDULER_GPU_DISCOVERY": "virtual",
            "DLAAS_SCHEDULER_VIRTUAL_GPUS": "4",
        },
        port,
        tmp_path / "scheduler.log",
    )
    await scheduler.start()
    try:  # the scheduler is a process of its own: stopped whatever happens below
        gateway = await start_gateway(databases, scheduler.address, storage.address, metering.address)
        async with gateway_channel(gateway.address, ADMIN_KEY) as admin:
            key = await create_account(admin, "default", "standard")
        channel = gateway_channel(gateway.address, key)
        yield CrashablePlatform(scheduler, [gateway, storage, metering], channel)
        await channel.close()
        await gateway.stop(0)
    finally:
        scheduler.stop()
        for service in [storage, metering]:
            await service.stop(0)


async def state_of(platform: CrashablePlatform, name: str) -> int:
    try:
        run = await platform.client.GetRun(gateway_pb2.GetRunRequest(name=name), timeout=2)
    except grpc.aio.AioRpcError:
        return run_pb2.RUN_STATE_UNSPECIFIED
    return int(run.status.state)


async def until(platform: CrashablePlatform, name: str, state: int, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    seen: list[int] = []
    while (current := await state_of(platform, name)) != state:
        if not seen or seen[-1] != current:
            seen.append(current)
        assert asyncio.get_running_loop().time() < deadline, f"{name} never reached {state}; saw {seen}"
        await asyncio.sleep(0.01)


async def test_kill_9_of_the_scheduler_loses_nothing_and_runs_nothing_twice(crashable: CrashablePlatform) -> None:
    p = crashable
    sleeper = await submit(p.client, manifest("python -c 'import time; time.sleep(4); print(\"slept\")'"))
    writer_code = pack(
        {
            # Many files make a long upload (each is copied, renamed into place and verified).
            "write.py": "import os, time\ntime.sleep(6)\n"
            "for i in range(6000):\n"
            "    with open(os.path.join(os.environ['RESULT_DIR'], f'part-{i}.txt'), 'w') as f:\n"
            "        f.write(str(i) * 100)\n"
        }
    )
    writer = await submit(p.client, manifest("python write.py"), writer_code)

    await until(p, sleeper.name, run_pb2.RUN_STATE_RUNNING)
    p.scheduler.kill9()  # while RUNNING
    await asyncio.sleep(0.5)
    await p.scheduler.start()

    await until(p, writer.name, run_pb2.RUN_STATE_UPLOADING)
    p.scheduler.kill9()  # while UPLOADING
    await asyncio.sleep(0.5)
    await p.scheduler.start()

    for run in (sleeper, writer):
        done = await wait_for(p.client, run.name, timeout=90)
        states = [t.state for t in done.status.transitions]
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status
        assert states.count(run_pb2.RUN_STATE_ASSIGNED) == 1 and states.count(run_pb2.RUN_STATE_COMPLETED) == 1
        assert done.status.attempt == 1
        records = await closed_usage_records(p.client, done)
        assert len(records) == 1
        assert_billed_exactly(done, records)
