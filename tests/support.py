"""What the end-to-end tests do as a user would: upload data, submit, wait, read results."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from dlaas.credentials import aio_interceptors, bearer
from dlaas.gateway.v1 import accounts_pb2, accounts_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from dlaas.intervals import attempt_intervals
from dlaas.platform import healthy
from dlaas.procs import alive, process_group_members
from dlaas.types.v1 import run_pb2
from services.api_gateway.app import build_server as build_gateway
from services.api_gateway.domain.keys import new_key
from services.api_gateway.settings import GatewaySettings
from services.common.clients import open_channel
from services.common.db import create_engine
from services.common.server import CHANNEL_OPTIONS, Service
from services.common.settings import ServiceCredentials
from services.metering.app import build_server as build_metering
from services.metering.settings import MeteringSettings
from services.scheduler.app import build_server as build_scheduler
from services.scheduler.settings import DEFAULT_TIERS, SchedulerSettings, Tier
from services.storage.app import build_server as build_storage
from services.storage.settings import StorageSettings

# ---- the platform's service token: every service started by a test (in this process or as a
# child process, which inherits the environment) shares it, as `dlaas up` arranges ------------
# Uploads note their unfinished multipart uploads here, not in the user's cache.
os.environ.setdefault("DLAAS_TRANSFER_STATE_DIR", tempfile.mkdtemp(prefix="dlaas-test-uploads-"))
SERVICE_TOKEN = os.environ.setdefault("DLAAS_SERVICE_TOKEN", "test-service-" + uuid.uuid4().hex)


@contextlib.asynccontextmanager
async def sqlite_tables(database: Path, tables: MetaData) -> AsyncIterator[AsyncEngine]:
    """A service's engine (db.create_engine) on the SQLite file `database`, with `tables` made;
    disposed after."""
    engine = create_engine(f"sqlite:///{database}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(tables.create_all)
        yield engine
    finally:
        await engine.dispose()


def service_channel(address: str) -> grpc.aio.Channel:
    """A channel to an internal service, as another of our services opens it."""
    return open_channel(address, ServiceCredentials(SecretStr(SERVICE_TOKEN)))


# ---- tracing: one in-memory exporter for every service started in this process -------------

SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)


# ---- the whole platform, in this process, on ephemeral ports --------------------------------


@dataclass
class Platform:
    """The four real services, started as `dlaas up` would, but inside the test process.

    `channel` and `client` act as the account "default" (free tier); `account_channel` makes
    another account and a channel acting as it; `admin` is a channel with the admin key.
    """

    metering: Service
    storage: Service
    scheduler: Service
    gateway: Service
    channel: grpc.aio.Channel
    objects_dir: Path
    jobs_dir: Path
    key: str
    admin: grpc.aio.Channel
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def client(self) -> gateway_pb2_grpc.TrainingServiceAsyncStub:
        return gateway_pb2_grpc.TrainingServiceStub(self.channel)

    async def account_channel(self, account: str, tier: str = "free") -> grpc.aio.Channel:
        channel = gateway_channel(self.gateway.address, await create_account(self.admin, account, tier))
        self._channels.append(channel)
        return channel

    async def stop(self) -> None:
        for channel in (self.channel, self.admin, *self._channels):
            await channel.close()
        for service in (self.gateway, self.scheduler, self.storage, self.metering):
            await service.stop(0)
        end_runners(self.jobs_dir)


def end_runners(jobs_dir: Path) -> None:
    """Runners outlive their scheduler by design (a restarted one adopts them), and one that has not
    yet delivered its last report keeps trying; a test's platform is gone for good: end every runner
    it started, and its command's process group. Only processes working in the run's job directory
    are touched (a finished runner's pid may be another process's by now)."""
    for pid_file in jobs_dir.rglob("runner.pid"):
        job = pid_file.parent
        pids: list[int] = []
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pid_file.read_text()))
        with contextlib.suppress(OSError, ValueError):
            pgid = json.loads((job / "state.json").read_text()).get("command_pgid")
            if pgid:
                pids.extend(process_group_members(int(pgid)))
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(job):
                    os.kill(pid, signal.SIGKILL)


async def settle_tasks(timeout: float = 10) -> None:
    """Cancels the tasks a test left on its loop and waits for them; prints any that will not end.

    pytest-asyncio closes the loop by cancelling what is left and waiting without a limit: a task
    that ignores its cancellation hangs the test until pytest-timeout, with no word of which it
    was. This says which, first."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in left:
        task.cancel()
    if not left:
        return
    _, stuck = await asyncio.wait(left, timeout=timeout)
    for task in stuck:
        print(f"a task did not end when cancelled: {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


# One admin key for every gateway a test starts; each gateway installs it on start.
ADMIN_KEY = new_key().secret


def gateway_channel(address: str, key: str) -> grpc.aio.Channel:
    """A channel to the gateway whose every call carries `key`, as the CLI sends it."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=aio_interceptors(bearer(key)))


async def create_account(admin: grpc.aio.Channel, account: str, tier: str = "free") -> str:
    """Creates `account` through the admin API; returns its API key."""
    created = await accounts_pb2_grpc.AccountServiceStub(admin).CreateAccount(
        accounts_pb2.CreateAccountRequest(account_id=account, tier=tier)
    )
    return created.secret


async def start_platform(
    databases: Any,
    root: Path,
    *,
    virtual_gpus: int = 2,
    tiers: dict[str, Tier] | None = None,
    gateway: dict[str, Any] | None = None,
    scheduler_settings: dict[str, Any] | None = None,
) -> Platform:
    """`gateway`, `scheduler_settings`: GatewaySettings, SchedulerSettings fields to set (rate limits, the backend)."""
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
            tiers=tiers or dict(DEFAULT_TIERS),
            **(scheduler_settings or {}),
        )
    )
    await scheduler.start()
    front = await start_gateway(databases, scheduler.address, storage.address, metering.address, **(gateway or {}))
    admin = gateway_channel(front.address, ADMIN_KEY)
    key = await create_account(admin, "default", "free")
    channel = gateway_channel(front.address, key)
    return Platform(metering, storage, scheduler, front, channel, objects_dir, jobs_dir, key, admin)


async def start_gateway(databases: Any, scheduler: str, storage: str, metering: str, **settings: Any) -> Service:
    """A gateway that knows the admin key ADMIN_KEY (`create_account` makes the others); `database_url`
    set: on that database (a restart), else on a new one."""
    gateway = await build_gateway(
        GatewaySettings(
            database_url=settings.pop("database_url", None) or databases.url("gateway"),
            scheduler_address=scheduler,
            storage_address=storage,
            metering_address=metering,
            bootstrap_admin_key=SecretStr(ADMIN_KEY),
            **settings,
        )
    )
    await gateway.start()
    return gateway


TERMINAL = {run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED}


def manifest(
    command: str, *, name: str = "test", gpus: int = 1, data_bucket: str | None = None, max_runtime: str = ""
) -> str:
    data = f"data: {{bucket: {data_bucket}}}\n" if data_bucket else ""
    if max_runtime:
        data += f"max_runtime: {max_runtime}\n"
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


class ServiceProcess:
    """A service as its own process (`python -m services.<name>`), for tests that kill -9 it."""

    def __init__(self, module: str, env: dict[str, str], port: int, log_path: Path):
        self.module, self.env, self.port, self.log_path = module, env, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = asyncio.get_running_loop().time() + timeout
        while not await asyncio.to_thread(healthy, self.address, 0.5):
            if self.process.poll() is not None or asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{self.module} did not start:\n{self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.05)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- billing: what the scheduler's transitions say each attempt must be billed ---------------


async def closed_usage_records(
    client: gateway_pb2_grpc.TrainingServiceAsyncStub, run: gateway_pb2.Run, timeout: float = 30
) -> list[gateway_pb2.UsageRecord]:
    """The ended run's usage records, once metering holds a closed one per attempt (delivery is asynchronous)."""
    wanted = len(attempt_intervals(run))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        listing = await client.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=run.name, page_size=1000))
        records = list(listing.usage_records)
        if len(records) >= wanted and not any(r.accruing for r in records):
            return records
        assert asyncio.get_running_loop().time() < deadline, f"usage of {run.name} never closed: {records}"
        await asyncio.sleep(0.05)


def assert_billed_exactly(run: gateway_pb2.Run, records: list[gateway_pb2.UsageRecord]) -> int:
    """Each attempt billed GPUs × (close − ASSIGNED) of the scheduler's transitions, to the millisecond,
    once; returns the run's billed GPU-milliseconds."""
    gpus = run.spec.resources.gpus
    expected = {a: (start, end, gpus * (end - start)) for a, (start, end) in attempt_intervals(run).items() if end}
    billed = {
        r.attempt: (r.start_time.ToMilliseconds(), r.end_time.ToMilliseconds(), r.gpu_milliseconds) for r in records
    }
    assert len(records) == len(billed), f"an attempt of {run.name} has two records: {records}"
    assert billed == expected, f"{run.name}: billed {billed}, transitions say {expected}"
    return sum(ms for _, _, ms in billed.values())
