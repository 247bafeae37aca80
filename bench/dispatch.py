"""make bench-dispatch: how fast the local backend turns a decision into a running command.

Starts the embedded default (`dlaas up` in a temporary DLAAS_HOME, free tier: 1 GPU at a time)
and measures, with the command's own clock (`date +%s%N`, printed first thing):
- free_to_start: from a run ending (the scheduler's recorded end, the GPU freed) to the next
  queued run's command starting;
- submit_to_start: from the client's CreateRun call to the command starting, on an idle node
  (idle for a second: the local backend keeps a standby runner warm, which takes about 0.3 s
  to import after each start).

Last line: `free_to_start_p50_ms=… submit_to_start_p50_ms=…` (and p90s).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from dlaas import platform
from dlaas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from dlaas.runner.state import TERMINAL_STATES

COMMAND = 'echo "started_ns=$(date +%s%N)"; sleep {sleep}'
TERMINAL = TERMINAL_STATES


def manifest(sleep: float) -> str:
    return (
        "name: dispatch-bench\nframework: {name: python}\n"
        f"command: '{COMMAND.format(sleep=sleep)}'\nresources: {{gpus: 1}}\nresults: {{bucket: bench}}\n"
    )


def submit(client: gateway_pb2_grpc.TrainingServiceStub, sleep: float) -> tuple[str, float]:
    sent = time.time()
    run = client.CreateRun(gateway_pb2.CreateRunRequest(manifest=manifest(sleep), request_id=uuid.uuid4().hex))
    return run.name, sent


def finished(client: gateway_pb2_grpc.TrainingServiceStub, name: str) -> gateway_pb2.Run:
    last = None
    for run in client.WatchRun(gateway_pb2.WatchRunRequest(name=name), timeout=120):
        last = run
        if run.status.state in TERMINAL:
            return run
    assert last is not None
    return last


def started_ms(client: gateway_pb2_grpc.TrainingServiceStub, name: str) -> float:
    chunks = client.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name), timeout=60)
    text = b"".join(c.data for c in chunks).decode()
    match = re.search(r"started_ns=(\d+)", text)
    if not match:
        raise RuntimeError(f"{name}: no start mark in its log:\n{text}")
    return int(match.group(1)) / 1e6


def end_ms(run: gateway_pb2.Run) -> float:
    return float(next(t.time.ToMilliseconds() for t in reversed(run.status.transitions) if t.state in TERMINAL))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dlaas-bench-dispatch-"))
    os.environ["DLAAS_HOME"] = str(home)
    os.environ["DLAAS_SCHEDULER_VIRTUAL_GPUS"] = "1"
    platform.up(home)
    try:
        client = gateway_pb2_grpc.TrainingServiceStub(platform.channel(home))
        finished(client, submit(client, 0)[0])  # warm-up
        submit_to_start: list[float] = []
        free_to_start: list[float] = []
        for _ in range(args.pairs):
            time.sleep(1.0)  # an idle node: the backend's standby runner has warmed up since the last start
            first, sent = submit(client, 0.5)
            second, _ = submit(client, 0)  # queued behind the first: the free tier has 1 GPU
            first_run = finished(client, first)
            finished(client, second)
            submit_to_start.append(started_ms(client, first) - sent * 1000)
            free_to_start.append(started_ms(client, second) - end_ms(first_run))
    finally:
        platform.down(home)
    p50 = statistics.median

    def p90(values: list[float]) -> float:
        return statistics.quantiles(values, n=10)[8]

    print(f"pairs={args.pairs} home={home}")
    print(
        f"free_to_start_p50_ms={p50(free_to_start):.0f} free_to_start_p90_ms={p90(free_to_start):.0f} "
        f"submit_to_start_p50_ms={p50(submit_to_start):.0f} submit_to_start_p90_ms={p90(submit_to_start):.0f}"
    )


if __name__ == "__main__":
    main()
