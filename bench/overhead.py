"""make bench-overhead: the digits training run directly and through the platform, alternating.

- overhead_ratio: wall time through the platform (submission to upload verified, the billed span
  plus queueing) over wall time of the same command run directly, for a job of about a minute;
- fixed_overhead_s: for a tiny job, (submission → command start) + (command end → upload verified).

Both measured on the embedded default (`dlaas up` in a temporary DLAAS_HOME), same machine, same
command, alternating direct and platform runs so that drift hits both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from dlaas import platform
from dlaas.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from dlaas.runner.environment import thread_limits
from dlaas.runner.state import TERMINAL_STATES
from dlaas.types.v1 import run_pb2

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
TERMINAL = TERMINAL_STATES


def manifest(command: str) -> str:
    return (
        "name: overhead-bench\nframework: {name: pytorch}\n"
        f"command: '{command}'\nresources: {{gpus: 1}}\ndata: {{bucket: digits-data}}\nresults: {{bucket: bench}}\n"
    )


def through_platform(client: gateway_pb2_grpc.TrainingServiceStub, command: str, code: bytes) -> gateway_pb2.Run:
    sent = time.time()
    run = client.CreateRun(
        gateway_pb2.CreateRunRequest(manifest=manifest(command), code_archive=code, request_id=uuid.uuid4().hex)
    )
    for update in client.WatchRun(gateway_pb2.WatchRunRequest(name=run.name), timeout=600):
        if update.status.state in TERMINAL:
            if update.status.state != run_pb2.RUN_STATE_COMPLETED:
                raise RuntimeError(f"{run.name} ended {update.status}")
            update.create_time.FromMilliseconds(int(sent * 1000))  # the client's submission time
            return update
    raise RuntimeError(f"{run.name}: the watch ended early")


def directly(command: str, data_dir: Path, result_dir: Path) -> float:
    # The same interpreter the platform gives the command: the environment dlaas runs in.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "DATA_DIR": str(data_dir), "RESULT_DIR": str(result_dir), "PATH": path}
    env |= thread_limits(1)  # the thread pools the platform sizes to the manifest's CPUs (the default, 1)
    started = time.perf_counter()
    subprocess.run(command, shell=True, cwd=DIGITS, env=env, check=True, stdout=subprocess.DEVNULL)  # noqa: S602
    return time.perf_counter() - started


def command_span_ms(client: gateway_pb2_grpc.TrainingServiceStub, name: str) -> tuple[float, float]:
    """(command start, command end) from the run's log, written by the command itself."""
    text = b"".join(c.data for c in client.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name))).decode()
    start = re.search(r"start_ns=(\d+)", text)
    end = re.search(r"end_ns=(\d+)", text)
    if not start or not end:
        raise RuntimeError(f"{name}: no start/end marks in its log")
    return int(start.group(1)) / 1e6, int(end.group(1)) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6000, help="about a minute on a 2-core CPU (one thread)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tiny", type=int, default=5, help="tiny jobs for the fixed overhead")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dlaas-bench-overhead-"))
    data = home / "data"
    subprocess.run([sys.executable, str(DIGITS / "prepare_data.py"), str(data)], check=True, stdout=subprocess.DEVNULL)
    os.environ.update({"DLAAS_HOME": str(home), "DLAAS_SCHEDULER_VIRTUAL_GPUS": "1"})
    platform.up(home)
    try:
        client = gateway_pb2_grpc.TrainingServiceStub(platform.channel(home))
        grant = client.CreateDataGrant(
            gateway_pb2.CreateDataGrantRequest(
                location=run_pb2.ObjectLocation(bucket="digits-data"), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
            )
        )
        (Path(grant.local.path) / "digits.npz").write_bytes((data / "digits.npz").read_bytes())
        code = _pack()
        long_command = f"python train.py --epochs {args.epochs}"
        direct_s: list[float] = []
        platform_s: list[float] = []
        for _ in range(args.rounds):
            direct_s.append(directly(long_command, data, home / "direct-results"))
            run = through_platform(client, long_command, code)
            platform_s.append(_end_ms(run) / 1000 - run.create_time.ToMilliseconds() / 1000)
        tiny = 'echo "start_ns=$(date +%s%N)"; echo "end_ns=$(date +%s%N)"'
        fixed: list[float] = []
        for _ in range(args.tiny):
            run = through_platform(client, tiny, b"")
            start_ms, end_ms = command_span_ms(client, run.name)
            fixed.append(((start_ms - run.create_time.ToMilliseconds()) + (_end_ms(run) - end_ms)) / 1000)
    finally:
        platform.down(home)
    ratio = statistics.median(platform_s) / statistics.median(direct_s)
    print(f"direct_s={[round(x, 2) for x in direct_s]} platform_s={[round(x, 2) for x in platform_s]} home={home}")
    print(f"overhead_ratio={ratio:.3f} fixed_overhead_s={statistics.median(fixed):.3f}")


def _end_ms(run: gateway_pb2.Run) -> int:
    return int(next(t.time.ToMilliseconds() for t in reversed(run.status.transitions) if t.state in TERMINAL))


def _pack() -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(DIGITS / "train.py", arcname="train.py")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
