"""Metrics a run reports reach the platform: listed with step and time, and followed live."""

from __future__ import annotations

import asyncio
import base64
import math
from pathlib import Path

import grpc
import pytest

from dlaas.gateway.v1 import experiments_pb2, experiments_pb2_grpc
from tests.support import Platform, manifest, pack, submit, wait_for

pytestmark = pytest.mark.e2e

TRAIN = """\
import math, sys, time
from dlaas import report
for epoch in range(1, 4):
    report(epoch=epoch, loss=1.0 / epoch)
    print(f"epoch={epoch} accuracy={0.5 + epoch / 10}", flush=True)
print("Epoch 4: not a metric line loss=3")
print("[dlaas] loss=9")
report(step=5, loss=float("nan"))
"""


async def test_reported_and_printed_metrics_are_stored_with_their_steps(platform: Platform) -> None:
    metrics = experiments_pb2_grpc.MetricsServiceStub(platform.channel)
    run = await submit(platform.client, manifest("python train.py"), pack({"train.py": TRAIN}))
    done = await wait_for(platform.client, run.name)
    assert done.status.exit_code == 0, done.status

    points: list[tuple[str, int, float]] = []
    for _ in range(100):  # the relay delivers asynchronously; the run's end does not wait for it
        listing = await metrics.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=run.name))
        points = [(p.name, p.step, p.value) for p in listing.points]
        if len(points) >= 7:
            break
        await asyncio.sleep(0.05)
    assert points[:6] == [
        ("loss", 1, 1.0),
        ("accuracy", 1, 0.6),
        ("loss", 2, 0.5),
        ("accuracy", 2, 0.7),
        ("loss", 3, 1 / 3),
        ("accuracy", 3, 0.8),
    ]
    assert points[6][:2] == ("loss", 5) and math.isnan(points[6][2])
    assert len(points) == 7  # the other lines are not metrics
    assert all(p.time.seconds > 0 for p in listing.points)

    only_loss = await metrics.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=run.name, metrics=["loss"]))
    assert [p.step for p in only_loss.points] == [1, 2, 3, 5]
    page = await metrics.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=run.name, page_size=4))
    rest = await metrics.ListRunMetrics(
        experiments_pb2.ListRunMetricsRequest(name=run.name, page_token=page.next_page_token)
    )
    assert len(page.points) == 4 and len(rest.points) == 3 and not rest.next_page_token


async def test_following_a_run_streams_its_points_while_it_runs_and_ends_with_it(
    platform: Platform, tmp_path: Path
) -> None:
    metrics = experiments_pb2_grpc.MetricsServiceStub(platform.channel)
    gate = tmp_path / "go"  # the run waits for it; the test makes it once it saw the first point live
    code = pack(
        {
            "train.py": "import pathlib, sys, time\n"
            "print('step=1 loss=0.9', flush=True)\n"
            "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.05)\n"
            "print('step=2 loss=0.4', flush=True)\n"
        }
    )
    run = await submit(platform.client, manifest(f"python train.py {gate}"), code)
    seen: list[tuple[int, float]] = []

    async def follow() -> None:
        stream = metrics.StreamRunMetrics(experiments_pb2.StreamRunMetricsRequest(name=run.name, follow=True))
        async for response in stream:
            seen.extend((p.step, p.value) for p in response.points)
            if seen == [(1, 0.9)]:
                gate.touch()

    await asyncio.wait_for(follow(), 60)
    assert seen == [(1, 0.9), (2, 0.4)]
    done = await wait_for(platform.client, run.name)
    assert done.status.exit_code == 0


async def test_another_accounts_run_metrics_are_not_found(platform: Platform) -> None:
    run = await submit(platform.client, manifest("echo loss=1"))
    other = experiments_pb2_grpc.MetricsServiceStub(await platform.account_channel("someone-else"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await other.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=run.name))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    await wait_for(platform.client, run.name)  # no runner left behind the platform


async def test_tensorboard_scalars_in_log_dir_become_metrics(platform: Platform) -> None:
    from tests.unit.test_search_metric_lines import _event, _record, _simple

    events = _record(_event(3, 1.7e9, [_simple("train/loss", 0.5)])) + _record(
        _event(4, 1.7e9, [_simple("train/loss", 0.25)])
    )
    code = pack(
        {
            "train.py": "import base64, os, pathlib\n"
            f"data = base64.b64decode({base64.b64encode(events).decode()!r})\n"
            "pathlib.Path(os.environ['LOG_DIR'], 'events.out.tfevents.1.host').write_bytes(data)\n"
        }
    )
    run = await submit(platform.client, manifest("python train.py"), code)
    done = await wait_for(platform.client, run.name)
    assert done.status.exit_code == 0, done.status
    metrics = experiments_pb2_grpc.MetricsServiceStub(platform.channel)
    for _ in range(100):
        listing = await metrics.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=run.name))
        if len(listing.points) >= 2:
            break
        await asyncio.sleep(0.05)
    assert [(p.name, p.step, p.value) for p in listing.points] == [("train/loss", 3, 0.5), ("train/loss", 4, 0.25)]
