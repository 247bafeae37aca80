"""make load: 10 accounts × 100 concurrent submissions while 50 clients follow logs and 10 stream
metrics, on the embedded default (`dlaas up` in a temporary DLAAS_HOME, 4 virtual GPUs).

The accounts' tiers, the runs' durations and which runs are followed come from `--seed`
(printed first, and again on failure): a run of this script is reproducible from it. Each run
prints a line with metrics (`step=… loss=…`) every 50 ms for its duration. Followers start as
soon as their run is accepted and follow it for `--follow-s` seconds (a queued run's follower
waits for it to start). Then every run is cancelled and the platform stopped.

Last line: seed=… submissions=… submit_errors=… submit_p50_ms=… submit_p99_ms=… log_streams=…
log_errors=… log_first_line_p99_ms=… metric_streams=… metric_errors=… metric_first_point_p99_ms=…
(first-line/point latencies from the followed run's start, as the scheduler recorded it, for
followed runs that started within the window). Errors are any status other than OK, by count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from dlaas import platform
from dlaas.config import config_path, read_config
from dlaas.credentials import aio_interceptors, bearer
from dlaas.gateway.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.runner.state import TERMINAL_STATES
from dlaas.types.v1 import run_pb2

TERMINAL = TERMINAL_STATES
TIERS = ("free", "standard", "premium")


def manifest(seconds: float, name: str) -> str:
    steps = max(1, int(seconds / 0.05))
    command = (
        f'python -c "import time\nfor i in range({steps}):\n'
        f"    print(f'step={{i}} loss={{1 / (i + 1):.4f}}', flush=True); time.sleep(0.05)\""
    )
    return (
        f"name: {name}\nframework: {{name: python}}\ncommand: {json.dumps(command)}\n"
        "resources: {gpus: 1}\nresults: {bucket: load}\n"
    )


@dataclass
class Figures:
    submit_ms: list[float] = field(default_factory=list)
    submit_errors: Counter[str] = field(default_factory=Counter)
    log_errors: Counter[str] = field(default_factory=Counter)
    metric_errors: Counter[str] = field(default_factory=Counter)
    log_first_ms: list[float] = field(default_factory=list)
    metric_first_ms: list[float] = field(default_factory=list)


def channel(address: str, key: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=aio_interceptors(bearer(key)))


async def started_ms(stub: Any, name: str) -> int | None:
    run = await stub.GetRun(gateway_pb2.GetRunRequest(name=name), timeout=30)
    times = [t.time.ToMilliseconds() for t in run.status.transitions if t.state == run_pb2.RUN_STATE_RUNNING]
    return times[0] if times else None


async def follow(kind: str, stub: Any, name: str, window_s: float, figures: Figures) -> None:
    """Follows a run's log (or metrics) for `window_s`; records the first arrival after its start."""
    first_ms: float | None = None
    errors = figures.log_errors if kind == "log" else figures.metric_errors

    async def read() -> None:
        nonlocal first_ms
        if kind == "log":
            stream = stub.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name, follow=True))
        else:
            stream = stub.StreamRunMetrics(experiments_pb2.StreamRunMetricsRequest(name=name, follow=True))
        async for message in stream:
            if first_ms is None and (message.data if kind == "log" else message.points):
                first_ms = time.time() * 1000

    try:
        await asyncio.wait_for(read(), window_s)
    except TimeoutError:
        pass  # the window closed: the follower's own choice, not an error
    except grpc.aio.AioRpcError as error:
        errors[error.code().name] += 1
        return
    if first_ms is not None:
        start = await started_ms(FOLLOWED_RUNS[name], name)
        if start is not None:
            (figures.log_first_ms if kind == "log" else figures.metric_first_ms).append(max(0.0, first_ms - start))


FOLLOWED_RUNS: dict[str, Any] = {}  # run name → its account's TrainingService stub


async def account_load(
    address: str,
    key: str,
    rng: random.Random,
    runs: int,
    followers: list[tuple[int, str]],
    window_s: float,
    figures: Figures,
    tasks: list[Awaitable[None]],
    names: list[tuple[Any, str]],
) -> None:
    """Submits `runs` at once; starts the followers the seed chose for this account's runs."""
    ch = channel(address, key)
    training = gateway_pb2_grpc.TrainingServiceStub(ch)
    metrics = experiments_pb2_grpc.MetricsServiceStub(ch)
    chosen = dict(followers)

    async def one(i: int) -> None:
        request = gateway_pb2.CreateRunRequest(
            manifest=manifest(rng.uniform(0.5, 2.0), f"load-{i}"), request_id=uuid.uuid4().hex
        )
        started = time.perf_counter()
        try:
            run = await training.CreateRun(request, timeout=120)
        except grpc.aio.AioRpcError as error:
            figures.submit_errors[error.code().name] += 1
            return
        figures.submit_ms.append((time.perf_counter() - started) * 1000)
        names.append((training, run.name))
        if i in chosen:
            FOLLOWED_RUNS[run.name] = training
            stub = training if chosen[i] == "log" else metrics
            tasks.append(asyncio.ensure_future(follow(chosen[i], stub, run.name, window_s, figures)))

    await asyncio.gather(*(one(i) for i in range(runs)))


async def cancel_all(names: list[tuple[Any, str]], timeout_s: float = 180) -> None:
    """Cancels every run (runners outlive the platform by design) and waits for each to end."""
    semaphore = asyncio.Semaphore(32)

    async def cancel(stub: Any, name: str) -> None:
        async with semaphore:
            try:
                await stub.CancelRun(gateway_pb2.CancelRunRequest(name=name), timeout=60)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:  # ended already
                    raise

    await asyncio.gather(*(cancel(stub, name) for stub, name in names))
    deadline = time.monotonic() + timeout_s
    pending = list(names)
    while pending and time.monotonic() < deadline:
        still = []
        for stub, name in pending:
            run = await stub.GetRun(gateway_pb2.GetRunRequest(name=name), timeout=30)
            if run.status.state not in TERMINAL:
                still.append((stub, name))
        pending = still
        if pending:
            await asyncio.sleep(0.5)
    if pending:
        raise RuntimeError(f"{len(pending)} runs did not end after being cancelled")


async def load(address: str, admin_key: str, args: argparse.Namespace, rng: random.Random) -> Figures:
    figures = Figures()
    keys: list[str] = []
    async with channel(address, admin_key) as admin:
        stub = accounts_pb2_grpc.AccountServiceStub(admin)
        for i in range(args.accounts):
            created = await stub.CreateAccount(
                accounts_pb2.CreateAccountRequest(account_id=f"load-{i}", tier=rng.choice(TIERS))
            )
            keys.append(created.secret)
    # Which runs are followed: (account, run index) → log or metrics, among each account's first
    # runs (fair share starts those first), so that most followed runs start within the window.
    followed = args.log_followers + args.metric_streams
    first = min(args.runs, -(-followed // args.accounts) + 2)
    slots = [(a, i) for a in range(args.accounts) for i in range(first)]
    picked = rng.sample(slots, args.log_followers + args.metric_streams)
    kinds = ["log"] * args.log_followers + ["metrics"] * args.metric_streams
    per_account: dict[int, list[tuple[int, str]]] = {a: [] for a in range(args.accounts)}
    for (account, index), kind in zip(picked, kinds, strict=True):
        per_account[account].append((index, kind))
    tasks: list[Awaitable[None]] = []
    names: list[tuple[Any, str]] = []
    seeds = [rng.randrange(1 << 30) for _ in keys]
    await asyncio.gather(
        *(
            account_load(
                address, key, random.Random(seed), args.runs, per_account[a], args.follow_s, figures, tasks, names
            )
            for a, (key, seed) in enumerate(zip(keys, seeds, strict=True))
        )
    )
    await asyncio.gather(*tasks)
    await cancel_all(names)
    return figures


def p(values: list[float], q: float) -> str:
    if not values:
        return "nan"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.quantiles(values, n=100)[round(q * 100) - 1]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100, help="concurrent submissions per account")
    parser.add_argument("--log-followers", type=int, default=50)
    parser.add_argument("--metric-streams", type=int, default=10)
    parser.add_argument("--follow-s", type=float, default=20.0)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"seed={seed}", flush=True)
    rng = random.Random(seed)
    home = Path(tempfile.mkdtemp(prefix="dlaas-load-"))
    os.environ.update(
        {
            "DLAAS_HOME": str(home),
            "DLAAS_SCHEDULER_VIRTUAL_GPUS": "4",
            "DLAAS_GATEWAY_LOG_LEVEL": "WARNING",
            "DLAAS_SCHEDULER_LOG_LEVEL": "WARNING",
        }
    )
    started = time.monotonic()
    platform.up(home)
    try:
        keys = read_config(config_path(home))
        address = platform.read_state(home)["api_gateway"].address
        figures = asyncio.run(load(address, str(keys["admin_key"]), args, rng))
    except BaseException:
        print(f"load failed; reproduce with --seed {seed}", file=sys.stderr, flush=True)
        raise
    finally:
        platform.down(home)
    submissions = len(figures.submit_ms) + sum(figures.submit_errors.values())
    print(
        f"elapsed_s={time.monotonic() - started:.1f} home={home} submit_errors_by_code={dict(figures.submit_errors)} "
        f"log_errors_by_code={dict(figures.log_errors)} metric_errors_by_code={dict(figures.metric_errors)}"
    )
    print(
        f"seed={seed} submissions={submissions} submit_errors={sum(figures.submit_errors.values())} "
        f"submit_p50_ms={p(figures.submit_ms, 0.5)} submit_p99_ms={p(figures.submit_ms, 0.99)} "
        f"log_streams={args.log_followers} log_errors={sum(figures.log_errors.values())} "
        f"log_first_line_p99_ms={p(figures.log_first_ms, 0.99)} "
        f"metric_streams={args.metric_streams} metric_errors={sum(figures.metric_errors.values())} "
        f"metric_first_point_p99_ms={p(figures.metric_first_ms, 0.99)}"
    )


if __name__ == "__main__":
    main()
