"""kill -9 of metering, of the scheduler, and of both at once, at random points of a 30-run workload:
afterwards the ledger equals the scheduler's intervals exactly, no event applied twice, none missing.
The last kill of the scheduler lands while its outbox holds events metering has not received.

The four services run as separate processes, as `dlaas up` starts them. The kill points are drawn
from a seed, printed first (rerun one with DLAAS_TEST_SEED=…).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest

from dlaas import platform
from dlaas.config import config_path, read_config
from dlaas.gateway.v1 import cluster_pb2, cluster_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from dlaas.intervals import attempt_intervals
from dlaas.types.v1 import run_pb2
from tests.support import (
    TERMINAL,
    assert_billed_exactly,
    closed_usage_records,
    gateway_channel,
    manifest,
    submit,
)

pytestmark = pytest.mark.e2e

RUNS = 30


async def kill9(root: Path, name: str, client: gateway_pb2_grpc.TrainingServiceAsyncStub) -> None:
    try:
        print(f"kill -9 {name}: {await ended_count(client)} of {RUNS} runs ended")
    except grpc.aio.AioRpcError:
        print(f"kill -9 {name}: the scheduler is down")
    os.kill(platform.read_state(root)[name].pid, signal.SIGKILL)


async def restart(root: Path, name: str, after: float = 0) -> None:
    await asyncio.sleep(after)
    before = platform.read_state(root)[name]
    again = await asyncio.to_thread(platform.restart, root, name)
    assert (again.port, again.metrics_port) == (before.port, before.metrics_port) and again.pid != before.pid
    assert platform.read_state(root)[name] == again


def undelivered(root: Path) -> int:
    """Usage events the scheduler has written but not yet delivered to metering (its outbox)."""
    with sqlite3.connect(root / "db" / "scheduler.db", timeout=10) as db:
        return int(db.execute("SELECT COUNT(*) FROM scheduler_outbox WHERE delivered_ms IS NULL").fetchone()[0])


async def until_undelivered(root: Path) -> int:
    deadline = asyncio.get_running_loop().time() + 30
    while (pending := undelivered(root)) == 0:
        assert asyncio.get_running_loop().time() < deadline, "no state change while metering was down"
        await asyncio.sleep(0.02)
    return pending


async def ended_count(client: gateway_pb2_grpc.TrainingServiceAsyncStub) -> int:
    listing = await client.ListRuns(gateway_pb2.ListRunsRequest(page_size=100), timeout=5)
    return sum(run.status.state in TERMINAL for run in listing.runs)


async def until_ended(client: gateway_pb2_grpc.TrainingServiceAsyncStub, count: int) -> None:
    """Until `count` runs have ended: kills land at points of the workload, whatever the machine's speed."""
    deadline = asyncio.get_running_loop().time() + 60
    while await ended_count(client) < count:
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {count} runs ever ended"
        await asyncio.sleep(0.02)


async def all_ended(client: gateway_pb2_grpc.TrainingServiceAsyncStub, names: list[str]) -> list[gateway_pb2.Run]:
    """Every run once terminal; the scheduler may be down meanwhile (the gateway then answers UNAVAILABLE)."""
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        try:
            runs = [await client.GetRun(gateway_pb2.GetRunRequest(name=name), timeout=5) for name in names]
        except grpc.aio.AioRpcError:
            runs = []
        if runs and all(run.status.state in TERMINAL for run in runs):
            return runs
        pending = [run.name for run in runs if run.status.state not in TERMINAL]
        assert asyncio.get_running_loop().time() < deadline, f"runs never ended: {pending}"
        await asyncio.sleep(0.2)


async def test_kill_9_of_metering_and_the_scheduler_loses_no_usage_and_doubles_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get("DLAAS_TEST_SEED") or random.randrange(1 << 32))
    print(f"DLAAS_TEST_SEED={seed}")
    rng = random.Random(seed)
    monkeypatch.setenv("DLAAS_SCHEDULER_GPU_DISCOVERY", "virtual")
    monkeypatch.setenv("DLAAS_SCHEDULER_VIRTUAL_GPUS", "8")
    monkeypatch.delenv("DLAAS_ENDPOINT", raising=False)
    root = tmp_path / "home"
    started = await asyncio.to_thread(platform.up, root)
    keys = read_config(config_path(root))
    address = started["api_gateway"].address
    async with gateway_channel(address, keys["admin_key"]) as admin:
        await cluster_pb2_grpc.AdminServiceStub(admin).SetAccountTier(
            cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="standard")
        )
    channel = gateway_channel(address, keys["api_key"])
    try:
        client = gateway_pb2_grpc.TrainingServiceStub(channel)
        names = []
        for i in range(RUNS):
            command = f"python -c 'import time; time.sleep({rng.uniform(0.5, 3.0):.2f})'"
            run = await submit(client, manifest(command, name=f"w{i}", gpus=rng.choice((0, 1, 1, 1))))
            names.append(run.name)

        # The kill points: after a random number of runs ended, plus a random delay.
        first = rng.randint(2, 7)
        second = rng.randint(first + 2, 14)
        third = rng.randint(second + 2, 22)
        # Metering dies: the scheduler's outbox holds the events until it is back.
        await until_ended(client, first)
        await asyncio.sleep(rng.uniform(0, 0.3))
        await kill9(root, "metering", client)
        back = asyncio.create_task(restart(root, "metering", after=rng.uniform(0.1, 1.0)))
        # The scheduler dies at some other point, with events in flight or not yet delivered.
        await until_ended(client, second)
        await asyncio.sleep(rng.uniform(0, 0.3))
        await kill9(root, "scheduler", client)
        await restart(root, "scheduler", after=rng.uniform(0.1, 1.0))
        await back
        # Both: metering first, so that state changes pile up undelivered, then the scheduler with them.
        await until_ended(client, third)
        await kill9(root, "metering", client)
        await asyncio.sleep(rng.uniform(0, 0.5))
        print(f"{await until_undelivered(root)} usage events undelivered")
        await kill9(root, "scheduler", client)
        await restart(root, "scheduler")
        await restart(root, "metering", after=rng.uniform(0.1, 1.0))

        runs = await all_ended(client, names)
        expected_ids: set[str] = set()
        attempts = 0
        for run in runs:
            billed = assert_billed_exactly(run, await closed_usage_records(client, run, timeout=60))
            assert (billed > 0) == (run.spec.resources.gpus > 0 and bool(attempt_intervals(run)))
            for attempt in attempt_intervals(run):
                expected_ids |= {f"{run.name}/attempts/{attempt}/open", f"{run.name}/attempts/{attempt}/close"}
                attempts += 1
        assert any(run.status.state == run_pb2.RUN_STATE_COMPLETED for run in runs)

        # The ledger itself: each event id applied once (its primary key), none missing, none foreign.
        with sqlite3.connect(root / "db" / "metering.db") as ledger:
            applied = [row[0] for row in ledger.execute("SELECT event_id FROM usage_applied_events")]
            intervals = ledger.execute("SELECT COUNT(*) FROM usage_intervals").fetchone()[0]
        assert len(applied) == len(set(applied))
        assert set(applied) == expected_ids, f"seed {seed}"
        assert intervals == attempts
    finally:
        await channel.close()
        await asyncio.to_thread(platform.down, root)
