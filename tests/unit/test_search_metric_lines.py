"""How the runner reads metrics from a command's output (dlaas.report lines, name=value lines)."""

from __future__ import annotations

import asyncio
import io
import math
import struct
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlaas import report
from dlaas.runner.metrics import LineReader, Reading, parse_line
from dlaas.runner.tensorboard import EventDirectory


def test_name_value_lines_are_metrics_and_the_step_comes_from_step_or_epoch() -> None:
    assert parse_line("epoch=3 loss=0.25 accuracy=0.9\n") == [Reading("loss", 0.25, 3), Reading("accuracy", 0.9, 3)]
    assert parse_line("step=10, loss=1e-3; lr=0.1") == [Reading("loss", 0.001, 10), Reading("lr", 0.1, 10)]
    assert parse_line("loss=0.5", default_step=7) == [Reading("loss", 0.5, 7)]
    nan = parse_line("loss=nan")
    assert nan[0].name == "loss" and math.isnan(nan[0].value)


@pytest.mark.parametrize(
    "line",
    [
        "Epoch 3: loss=0.25",
        "[dlaas] attempt 1 of run x on GPU 0",
        "[dlaas] loss=3",
        "path=/tmp/x",
        "",
        "total=10 gpus=0,1",
        "=3",
    ],
)
def test_other_lines_are_not_metrics(line: str) -> None:
    assert parse_line(line) == []


def test_report_prints_one_marked_line_the_runner_reads_back() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        report(step=4, loss=0.125, accuracy=1)
    (line,) = out.getvalue().splitlines()
    assert parse_line(line) == [Reading("loss", 0.125, 4), Reading("accuracy", 1.0, 4)]
    with pytest.raises(TypeError):
        report(loss="low")  # type: ignore[arg-type]


@given(st.text(max_size=200))
def test_no_line_breaks_the_parser(line: str) -> None:
    for reading in parse_line(line):
        assert reading.name and isinstance(reading.value, float)


def test_line_reader_returns_only_complete_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "training.log"
    reader = LineReader(path)
    assert list(reader.read()) == []
    path.write_text("loss=1\nloss=")
    assert list(reader.read()) == ["loss=1"]
    with open(path, "a") as stream:
        stream.write("2\n")
    assert list(reader.read()) == ["loss=2"]
    assert list(reader.read()) == []


# ---- TensorBoard event files, encoded here byte by byte as TensorFlow's event.proto lays them out ----


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _event(step: int, wall_time: float, values: list[bytes]) -> bytes:
    summary = b"".join(_field(1, 2, v) for v in values)
    return _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step)) + _field(5, 2, summary)


def _simple(tag: str, value: float) -> bytes:  # what PyTorch's SummaryWriter.add_scalar writes
    return _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def _tensor(tag: str, value: float) -> bytes:  # what TF2's tf.summary.scalar writes
    tensor = _field(1, 0, _varint(1)) + _field(2, 2, b"") + _field(5, 2, struct.pack("<f", value))
    return _field(1, 2, tag.encode()) + _field(8, 2, tensor)


def _record(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4


def test_tensorboard_scalars_are_read_from_event_files_as_they_grow(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "train").mkdir(parents=True)
    path = logs / "train" / "events.out.tfevents.1700000000.host.1.0"
    version = _field(1, 1, struct.pack("<d", 1.7e9)) + _field(3, 2, b"brain.Event:2")
    first = _record(_event(1, 1.7e9 + 1, [_simple("loss", 0.5), _tensor("eval/accuracy", 0.75)]))
    second = _record(_event(2, 1.7e9 + 2, [_simple("loss", 0.25)]))
    path.write_bytes(_record(version) + first + second[:10])  # the second record is half written
    reader = EventDirectory(logs)
    assert [(s.tag, s.step, s.value) for s in reader.read()] == [("loss", 1, 0.5), ("eval/accuracy", 1, 0.75)]
    with open(path, "ab") as stream:
        stream.write(second[10:])
    (scalar,) = reader.read()
    assert (scalar.tag, scalar.step, scalar.value, scalar.wall_time_ns) == ("loss", 2, 0.25, int((1.7e9 + 2) * 1e9))
    assert reader.read() == []
    (logs / "events.out.tfevents.junk").write_bytes(b"\xff" * 40)  # not ours to understand: skipped
    assert reader.read() == []


async def test_the_scheduler_relay_replays_from_a_position_and_bounds_its_buffer() -> None:
    from dlaas.types.v1 import run_pb2
    from services.scheduler.runtime.metrics_relay import MetricsRelay

    relay = MetricsRelay(capacity=3)
    for n in range(1, 5):
        await relay.publish(f"accounts/a/runs/r{n}", 1, [run_pb2.MetricPoint(name="loss", value=n, sequence=n)])
    await relay.publish("accounts/a/runs/empty", 1, [])  # nothing to relay

    async def take(relay_id: str, after: int, count: int) -> list[tuple[int, str]]:
        stream = relay.follow(relay_id, after)
        return [(b.position, b.run) for b in [await anext(stream) for _ in range(count)]]

    # Another relay's position (a restarted scheduler): from the oldest batch still kept.
    assert await take("elsewhere", 3, 3) == [
        (2, "accounts/a/runs/r2"),
        (3, "accounts/a/runs/r3"),
        (4, "accounts/a/runs/r4"),
    ]
    assert await take(relay.relay_id, 3, 1) == [(4, "accounts/a/runs/r4")]
    waiting = asyncio.ensure_future(take(relay.relay_id, 4, 1))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await relay.publish("accounts/a/runs/r5", 2, [run_pb2.MetricPoint(name="loss", value=5, sequence=1)])
    assert await asyncio.wait_for(waiting, 5) == [(5, "accounts/a/runs/r5")]
