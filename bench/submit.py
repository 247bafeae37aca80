"""make bench-submit: concurrent clients submitting runs through the gateway of the embedded default.

Each submission is authenticated, parsed and validated, stored by the gateway (idempotent on
request_id) and queued by the scheduler (the gateway sends the submissions that arrive together
in one SubmitRuns call). One virtual GPU, held by a long first run, keeps every other run queued
(an arrival while no GPU is free wakes no decision round), so nothing but submission is measured.

Last line: `submissions_per_s=… p50_ms=… p99_ms=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

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


async def client(
    stub: gateway_pb2_grpc.TrainingServiceAsyncStub, queue: asyncio.Queue[int], latencies: list[float]
) -> None:
    while True:
        try:
            i = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        request = gateway_pb2.CreateRunRequest(manifest=MANIFEST.format(i=i), request_id=uuid.uuid4().hex)
        started = time.perf_counter()
        await stub.CreateRun(request, timeout=60)
        latencies.append((time.perf_counter() - started) * 1000)


async def run(address: str, key: str, count: int, concurrency: int) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(address, interceptors=aio_interceptors(bearer(key))) as channel:
        stub = gateway_pb2_grpc.TrainingServiceStub(channel)
        holder = await stub.CreateRun(
            gateway_pb2.CreateRunRequest(
                manifest=MANIFEST.format(i="holder").replace("python train.py --lr 0.01", "sleep 600")
            )
        )
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        latencies: list[float] = []
        started = time.perf_counter()
        await asyncio.gather(*(client(stub, queue, latencies) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        # Runners outlive the platform by design: stop the one holding the GPU before going down.
        await stub.CancelRun(gateway_pb2.CancelRunRequest(name=holder.name))
        async for run in stub.WatchRun(gateway_pb2.WatchRunRequest(name=holder.name), timeout=60):
            if run.status.state in (run_pb2.RUN_STATE_CANCELLED, run_pb2.RUN_STATE_FAILED):
                break
        return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
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
        before = {name: cpu_seconds(p.pid) for name, p in started.items()}
        before["bench_clients"] = cpu_seconds(os.getpid())
        elapsed, latencies = asyncio.run(run(started["api_gateway"].address, key, args.count, args.concurrency))
        # CPU per submission, by process: what the throughput costs, whatever else the machine runs.
        after = {name: cpu_seconds(p.pid) for name, p in started.items()}
        after["bench_clients"] = cpu_seconds(os.getpid())
        cpu_ms = {name: (after[name] - before[name]) * 1000 / args.count for name in before}
    finally:
        platform.down(home)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"count={args.count} concurrency={args.concurrency} elapsed_s={elapsed:.2f} home={home}")
    print("cpu_ms_per_submission " + " ".join(f"{name}={ms:.2f}" for name, ms in sorted(cpu_ms.items())))
    print(
        f"submissions_per_s={len(latencies) / elapsed:.0f} p50_ms={statistics.median(latencies):.1f} p99_ms={p99:.1f}"
    )


if __name__ == "__main__":
    main()
