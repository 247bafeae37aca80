"""make bench-submit: concurrent clients submitting runs through the gateway of the embedded default.

Each submission is authenticated, parsed and validated, stored by the gateway (idempotent on
request_id) and queued by the scheduler (the gateway sends the submissions that arrive together
in one SubmitRuns call). One virtual GPU, held by a long first run, keeps every other run queued
(an arrival while no GPU is free wakes no decision round), so nothing but submission is measured.

The clients first send `--warmup` submissions that are not counted: a new platform's first calls
fill its caches (a key's check, SQLAlchemy's compiled statements for each batch size) and take
up to three times longer; their p99 is printed apart. Last line, for the counted ones:
`submissions_per_s=… p50_ms=… p99_ms=… floor_calls_per_s=… vs_floor=…`. The floor is measured
in the same run: as many bare gRPC calls (health checks) to the same gateway from as many
clients. This machine's speed varies up to 2x over a day; `vs_floor`, the submissions' rate as a
share of the floor's, compares runs of different hours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dlaas import platform
from dlaas.config import config_path, read_config
from dlaas.credentials import aio_interceptors, bearer
from dlaas.gateway.v1 import cluster_pb2, cluster_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from dlaas.procs import cpu_seconds
from dlaas.types.v1 import run_pb2

MANIFEST = """\
name: bench-{i}
framework: {{name: python}}
command: python train.py --lr 0.01
resources: {{gpus: 1}}
results: {{bucket: bench}}
"""


async def drive(
    call: Callable[[str], Awaitable[object]], items: list[str], concurrency: int
) -> tuple[float, list[float]]:
    """`call` for each of `items` from `concurrency` clients, each making its next call as its last
    is answered: elapsed seconds, and each call's latency (ms)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def client() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            started = time.perf_counter()
            await call(item)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def submit_all(
    stub: gateway_pb2_grpc.TrainingServiceAsyncStub, names: list[str], concurrency: int
) -> tuple[float, list[float]]:
    """A run named after each of `names`, submitted by `concurrency` clients."""

    async def create(name: str) -> object:
        request = gateway_pb2.CreateRunRequest(manifest=MANIFEST.format(i=name), request_id=uuid.uuid4().hex)
        return await stub.CreateRun(request, timeout=60)

    return await drive(create, names, concurrency)


async def health_checks(channel: grpc.aio.Channel, count: int, concurrency: int) -> float:
    """Calls per second of the gateway's bare unary call (gRPC health, no guard, no work): this
    machine's floor for one gRPC call, measured in the same run as the submissions."""
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")

    async def check(_: str) -> object:
        return await stub.Check(request, timeout=60)

    elapsed, _ = await drive(check, [""] * count, concurrency)
    return count / elapsed


def cpu_by_process(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each platform process, and of these clients."""
    return {**{name: cpu_seconds(pid) for name, pid in pids.items()}, "bench_clients": cpu_seconds(os.getpid())}


async def run(
    address: str, key: str, count: int, concurrency: int, warmup: int, pids: dict[str, int]
) -> tuple[float, list[float], dict[str, float], float]:
    """Elapsed seconds, latencies and CPU ms per submission by process, of the counted submissions;
    then the floor: bare gRPC calls per second to the same gateway."""
    async with grpc.aio.insecure_channel(address, interceptors=aio_interceptors(bearer(key))) as channel:
        stub = gateway_pb2_grpc.TrainingServiceStub(channel)
        holder = await stub.CreateRun(
            gateway_pb2.CreateRunRequest(
                manifest=MANIFEST.format(i="holder").replace("python train.py --lr 0.01", "sleep 600")
            )
        )
        _, cold = await submit_all(stub, [f"warmup-{i}" for i in range(warmup)], concurrency)
        if cold:
            p99 = statistics.quantiles(cold, n=100)[98] if len(cold) > 1 else cold[0]
            print(f"warm-up: {len(cold)} submissions, not counted: p99_ms={p99:.1f} max_ms={max(cold):.1f}")
        before = cpu_by_process(pids)
        elapsed, latencies = await submit_all(stub, [str(i) for i in range(count)], concurrency)
        # CPU per submission, by process: what the throughput costs, whatever else the machine runs.
        after = cpu_by_process(pids)
        cpu_ms = {name: (after[name] - before[name]) * 1000 / count for name in before}
        floor = await health_checks(channel, count, concurrency)
        # Runners outlive the platform by design: stop the one holding the GPU before going down.
        await stub.CancelRun(gateway_pb2.CancelRunRequest(name=holder.name))
        async for run in stub.WatchRun(gateway_pb2.WatchRunRequest(name=holder.name), timeout=60):
            if run.status.state in (run_pb2.RUN_STATE_CANCELLED, run_pb2.RUN_STATE_FAILED):
                break
        return elapsed, latencies, cpu_ms, floor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--warmup", type=int, default=300, help="submissions sent first and not counted (a new platform's first calls)"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dlaas-bench-submit-"))
    os.environ.update(
        {
            "DLAAS_HOME": str(home),
            "DLAAS_SCHEDULER_VIRTUAL_GPUS": "1",
            "DLAAS_GATEWAY_LOG_LEVEL": "WARNING",
            "DLAAS_SCHEDULER_LOG_LEVEL": "WARNING",
        }
    )
    started = platform.up(home)
    try:
        with platform.channel(home, admin=True) as admin:  # the premium tier: its rate limit is far above the goal
            cluster_pb2_grpc.AdminServiceStub(admin).SetAccountTier(
                cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="premium")
            )
        key = read_config(config_path(home))["api_key"]
        pids = {name: p.pid for name, p in started.items()}
        elapsed, latencies, cpu_ms, floor = asyncio.run(
            run(started["api_gateway"].address, key, args.count, args.concurrency, args.warmup, pids)
        )
    finally:
        platform.down(home)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"count={args.count} concurrency={args.concurrency} elapsed_s={elapsed:.2f} home={home}")
    print("cpu_ms_per_submission " + " ".join(f"{name}={ms:.2f}" for name, ms in sorted(cpu_ms.items())))
    rate = len(latencies) / elapsed
    # The machine's speed varies up to 2x over a day; the share of the bare call's rate does not.
    print(
        f"submissions_per_s={rate:.0f} p50_ms={statistics.median(latencies):.1f} p99_ms={p99:.1f}"
        f" floor_calls_per_s={floor:.0f} vs_floor={rate / floor:.3f}"
    )


if __name__ == "__main__":
    main()
