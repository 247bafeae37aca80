"""make bench-metering: usage events through the real metering gRPC server, on SQLite.

Starts `python -m services.metering` as its own process on a fresh SQLite file and sends
100,000 events (45,000 run attempts opened and closed, plus 10 % redeliveries of events already
sent, some in the same batch, some later) in batches of 1,000, as the scheduler's outbox would.
A redelivery carries other times and GPUs than the first delivery, so one applied twice would
show in the ledger: afterwards every usage record is read back through ListUsageRecords and
compared with the first deliveries; `duplicates_applied` counts the records that differ, plus any
applied event beyond the unique ones.

Before it, a baseline: the same server fed one event per call (the outbox's pace), over 2,000
events. Last line: `events_per_s=… duplicates_applied=…`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from dlaas.credentials import SERVICE_TOKEN, aio_interceptors
from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from dlaas.platform import healthy

OPEN, CLOSE = metering_pb2.USAGE_EVENT_KIND_OPEN, metering_pb2.USAGE_EVENT_KIND_CLOSE
T0 = 1_793_491_200_000  # 2026-11-01T00:00:00Z
ACCOUNT = "bench"
TOKEN = secrets.token_urlsafe(32)  # the platform's service token, which the metering server requires


def channel(address: str) -> grpc.aio.Channel:
    """A channel to the metering server, as the scheduler's: each call carries the service token."""
    return grpc.aio.insecure_channel(address, interceptors=aio_interceptors(lambda: [(SERVICE_TOKEN, TOKEN)]))


def event(run: int, kind: int, time_ms: int, gpus: int) -> metering_pb2.UsageEvent:
    name = f"accounts/{ACCOUNT}/runs/r{run}"
    result = metering_pb2.UsageEvent(
        event_id=f"{name}/attempts/1/{'open' if kind == OPEN else 'close'}",
        account=f"accounts/{ACCOUNT}",
        run=name,
        attempt=1,
        kind=kind,  # type: ignore[arg-type]
        gpus=gpus if kind == OPEN else 0,
        gpu_type="virtual" if kind == OPEN else "",
        node="bench-node" if kind == OPEN else "",
    )
    result.event_time.FromMilliseconds(time_ms)
    return result


def workload(
    total: int, duplicate_share: float, seed: int
) -> tuple[list[metering_pb2.UsageEvent], dict[str, tuple[int, int | None, int]]]:
    """The event stream, and what each run's record must be: (start, end, gpus) of its first deliveries."""
    rng = random.Random(seed)
    duplicates = int(total * duplicate_share)
    runs = (total - duplicates) // 2
    unique: list[metering_pb2.UsageEvent] = []
    expected: dict[str, tuple[int, int | None, int]] = {}
    lag = 100  # a run closes about 100 events after it opened
    for step in range(runs + lag):
        if step < runs:
            gpus = rng.randint(1, 8)
            unique.append(event(step, OPEN, T0 + step * 10, gpus))
            expected[f"accounts/{ACCOUNT}/runs/r{step}"] = (T0 + step * 10, None, gpus)
        if step >= lag:
            closed = step - lag
            end = T0 + closed * 10 + rng.randint(1, 3_600_000)
            unique.append(event(closed, CLOSE, end, 0))
            start, _, gpus = expected[f"accounts/{ACCOUNT}/runs/r{closed}"]
            expected[f"accounts/{ACCOUNT}/runs/r{closed}"] = (start, end, gpus)
    stream = list(unique)
    for _ in range(duplicates):
        position = rng.randrange(1, len(stream))
        original = stream[rng.randrange(max(0, position - 3000), position)]  # a redelivery of a recent event
        copy = metering_pb2.UsageEvent()
        copy.CopyFrom(original)
        copy.event_time.FromMilliseconds(original.event_time.ToMilliseconds() + 7_000)
        if copy.kind == OPEN:
            copy.gpus = original.gpus + 1
        stream.insert(position, copy)
    return stream, expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_metering(directory: Path, name: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "DLAAS_METERING_PORT": str(port),
        "DLAAS_METERING_DATABASE_URL": f"sqlite:///{directory / name}.db",
        "DLAAS_METERING_LOG_LEVEL": "WARNING",
        "DLAAS_SERVICE_TOKEN": TOKEN,
    }
    log = open(directory / f"{name}.log", "wb")  # noqa: SIM115 - the server's lifetime
    process = subprocess.Popen([sys.executable, "-m", "services.metering"], env=env, stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not healthy(address):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"metering did not start:\n{(directory / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return process, address


async def send(address: str, events: list[metering_pb2.UsageEvent], batch: int) -> tuple[float, int, int]:
    """Seconds it took, events applied, events reported as duplicates."""
    async with channel(address) as opened:
        stub = metering_pb2_grpc.MeteringServiceStub(opened)
        applied = duplicates = 0
        started = time.perf_counter()
        for index in range(0, len(events), batch):
            request = metering_pb2.RecordUsageEventsRequest(events=events[index : index + batch])
            answer = await stub.RecordUsageEvents(request, timeout=120)
            applied += answer.applied_count
            duplicates += answer.duplicate_count
        return time.perf_counter() - started, applied, duplicates


async def ledger(address: str) -> dict[str, tuple[int, int | None, int]]:
    """Every usage record of the account, as (start, end, gpus)."""
    records: dict[str, tuple[int, int | None, int]] = {}
    async with channel(address) as opened:
        stub = metering_pb2_grpc.MeteringServiceStub(opened)
        token = ""
        while True:
            page = await stub.ListUsageRecords(
                metering_pb2.ListUsageRecordsRequest(parent=f"accounts/{ACCOUNT}", page_size=1000, page_token=token)
            )
            for r in page.usage_records:
                end = r.end_time.ToMilliseconds() if r.HasField("end_time") else None
                records[r.run] = (r.start_time.ToMilliseconds(), end, r.gpus)
            token = page.next_page_token
            if not token:
                return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--baseline-events", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    stream, expected = workload(args.events, args.duplicates, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-metering-") as tmp:
        directory = Path(tmp)
        base_stream, _ = workload(args.baseline_events, args.duplicates, args.seed)
        process, address = start_metering(directory, "baseline")
        try:
            seconds, _, _ = asyncio.run(send(address, base_stream, 1))
        finally:
            process.terminate()
            process.wait()
        baseline = len(base_stream) / seconds
        print(f"baseline: {len(base_stream)} events one per call in {seconds:.2f} s: {baseline:.0f} events/s")

        process, address = start_metering(directory, "metering")
        try:
            seconds, applied, reported = asyncio.run(send(address, stream, args.batch))
            records = asyncio.run(ledger(address))
        finally:
            process.terminate()
            process.wait()
    unique = len(expected) * 2
    differing = sum(1 for run, record in expected.items() if records.get(run) != record)
    duplicates_applied = differing + max(0, applied - unique)
    rate = len(stream) / seconds
    print(
        f"{len(stream)} events ({len(stream) - unique} redeliveries) in batches of {args.batch}: {seconds:.2f} s; "
        f"applied {applied}, reported duplicate {reported}; {len(records)} records read back, {differing} differ"
    )
    print(f"batched vs one per call: {rate / baseline:.1f}x")
    print(f"events_per_s={rate:.0f} duplicates_applied={duplicates_applied}")


if __name__ == "__main__":
    main()
