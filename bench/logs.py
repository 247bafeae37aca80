"""make bench-logs: how long a line a run prints takes to reach a `dlaas logs -f` client.

A run prints a line with its clock every 50 ms; `dlaas logs RUN -f` (the CLI, as its own
process) follows it, and this script stamps each line as it reads it from the CLI's stdout.
Both clocks are this machine's. Last line: log_latency_p50_ms=… log_latency_p99_ms=…
(goal: p50 ≤ 100).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from dlaas import platform
from dlaas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from dlaas.types.v1 import run_pb2

DLAAS = str(Path(sys.executable).parent / "dlaas")


def manifest(lines: int, interval_s: float) -> str:
    command = (
        f'python -c "import time\nfor i in range({lines}):\n'
        f"    print(f'mark {{i}} {{time.time_ns()}}', flush=True); time.sleep({interval_s})\""
    )
    return (
        "name: logs-bench\nframework: {name: python}\n"
        f"command: {json.dumps(command)}\nresources: {{gpus: 1}}\nresults: {{bucket: bench}}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dlaas-bench-logs-"))
    os.environ.update({"DLAAS_HOME": str(home)})
    latencies_ms: list[float] = []
    try:
        platform.up(home)
        client = gateway_pb2_grpc.TrainingServiceStub(platform.channel(home))
        run = client.CreateRun(
            gateway_pb2.CreateRunRequest(manifest=manifest(args.lines, args.interval), request_id=uuid.uuid4().hex)
        )
        for update in client.WatchRun(gateway_pb2.WatchRunRequest(name=run.name), timeout=120):
            if update.status.state >= run_pb2.RUN_STATE_RUNNING:
                break
        follower = subprocess.Popen(
            [DLAAS, "logs", run.name, "-f"], stdout=subprocess.PIPE, env=os.environ.copy(), bufsize=0
        )
        assert follower.stdout is not None
        connected_ns: int | None = None
        for raw in iter(follower.stdout.readline, b""):
            arrived = time.time_ns()
            parts = raw.decode(errors="replace").split()
            if len(parts) == 3 and parts[0] == "mark":
                printed = int(parts[2])
                connected_ns = connected_ns or arrived
                if printed > connected_ns:  # the backlog printed before the client followed is not a latency
                    latencies_ms.append((arrived - printed) / 1e6)
        follower.wait(60)
    finally:
        platform.down(home)
    if len(latencies_ms) < 10:
        raise SystemExit(f"only {len(latencies_ms)} lines arrived")
    ordered = sorted(latencies_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"lines={len(ordered)} interval_s={args.interval} max_ms={ordered[-1]:.1f} home={home}")
    print(f"log_latency_p50_ms={statistics.median(ordered):.1f} log_latency_p99_ms={p99:.1f}")


if __name__ == "__main__":
    main()
