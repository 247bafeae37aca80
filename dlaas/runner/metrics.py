"""Metrics of the command: read from its output as it runs and sent to the scheduler in batches.

Two ways in, both through the command's stdout (which goes to JOB_DIR/training.log):

- ``dlaas.report(step=3, loss=0.25)`` prints one marked JSON line (``@dlaas.report {...}``);
- a line made only of ``name=value`` pairs (``epoch=3 loss=0.25 accuracy=0.91``), separated by
  spaces, commas or semicolons, with numeric values.

``step``, ``epoch``, ``iteration``, ``iter`` or ``global_step`` (the first present) is the
point's step rather than a metric. The runner's own ``[dlaas]`` lines are never metrics.

TensorBoard scalar event files (``events.out.tfevents.*``) written under LOG_DIR are read too,
about once a second: each scalar is a point named by its tag, at its step and wall time.

Points are numbered from 1 per attempt; a resent batch is stored once (the gateway keys points
by run, attempt and number). Sending never holds up the run: one background thread tails the
log and sends every 0.2 s; a scheduler that is down is retried, keeping up to 100 000 points.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from dlaas.report import MARKER
from dlaas.runner.config import RunnerConfig
from dlaas.runner.logfile import PREFIX
from dlaas.runner.tensorboard import EventDirectory
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.types.v1 import run_pb2

logger = logging.getLogger("dlaas.runner")

STEP_KEYS = ("step", "epoch", "iteration", "iter", "global_step")
SEND_INTERVAL_S = 0.2
BATCH_POINTS = 500
MAX_PENDING_POINTS = 100_000
MAX_LINE_BYTES = 64 * 1024
CALL_TIMEOUT_S = 5.0
_NAME = r"[A-Za-z_][A-Za-z0-9_./-]{0,127}"
_PAIR = re.compile(rf"^({_NAME})=([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|inf|-inf))$")
_SEPARATORS = re.compile(r"[\s,;]+")
_NAME_ONLY = re.compile(rf"^{_NAME}$")
_TAG_SPACES = re.compile(r"\s+")
EVENT_SCAN_EVERY = 5  # loops: TensorBoard event files under LOG_DIR are read about once a second


@dataclass(frozen=True)
class Reading:
    """One metric value as read from a line."""

    name: str
    value: float
    step: int


def parse_line(line: str, default_step: int = 0) -> list[Reading]:
    """The metric values of one line of output; [] when the line is not a metrics line."""
    line = line.rstrip("\r\n")
    if line.startswith(PREFIX):
        return []
    if line.startswith(MARKER):
        return _parse_report(line[len(MARKER) :], default_step)
    tokens = [t for t in _SEPARATORS.split(line.strip()) if t]
    if not tokens:
        return []
    pairs: dict[str, float] = {}
    for token in tokens:
        match = _PAIR.match(token)
        if not match:
            return []
        pairs[match[1]] = float(match[2])
    return _readings(pairs, default_step)


def _parse_report(text: str, default_step: int) -> list[Reading]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    values = {
        str(k): float(v)
        for k, v in data.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and _NAME_ONLY.match(str(k))
    }
    return _readings(values, default_step)


def _readings(values: dict[str, float], default_step: int) -> list[Reading]:
    step = default_step
    for key in STEP_KEYS:
        if key in values and math.isfinite(values[key]):
            step = int(values.pop(key))
            break
    return [Reading(name, value, step) for name, value in values.items()]


class LineReader:
    """Complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> Iterator[str]:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except OSError:
            return
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial = b""  # a progress bar without newlines; not a metrics line
        for raw in lines:
            if len(raw) <= MAX_LINE_BYTES:
                yield raw.decode("utf-8", errors="replace")


class MetricsSender:
    """Tails the training log, parses metric lines and sends them to ReportRunMetrics."""

    def __init__(self, config: RunnerConfig, log_path: Path, event_dir: Path | None = None) -> None:
        self._config = config
        self._reader = LineReader(log_path)
        self._events = EventDirectory(event_dir) if event_dir is not None else None
        self._passes = 0
        self._pending: list[run_pb2.MetricPoint] = []
        self._sequence = 0
        self._last_step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dlaas-metrics", daemon=True)
        self.cancel_requested = False
        self.points_sent = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Read what the command wrote last and send it, for at most `timeout_s`."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _collect(self) -> None:
        now = time.time_ns()
        for line in self._reader.read():
            for reading in parse_line(line, self._last_step):
                self._last_step = reading.step
                self._sequence += 1
                point = run_pb2.MetricPoint(
                    name=reading.name, value=reading.value, step=reading.step, sequence=self._sequence
                )
                point.time.CopyFrom(_timestamp(now))
                self._pending.append(point)
        self._passes += 1
        if self._events is not None and (self._passes % EVENT_SCAN_EVERY == 0 or self._stop.is_set()):
            for scalar in self._events.read():
                self._sequence += 1
                point = run_pb2.MetricPoint(
                    name=_TAG_SPACES.sub("_", scalar.tag)[:128],
                    value=scalar.value,
                    step=scalar.step,
                    sequence=self._sequence,
                )
                point.time.CopyFrom(_timestamp(scalar.wall_time_ns or now))
                self._pending.append(point)
        if len(self._pending) > MAX_PENDING_POINTS:
            dropped = len(self._pending) - MAX_PENDING_POINTS
            logger.warning("dropping %d metric points the scheduler did not take", dropped)
            del self._pending[:dropped]

    def _loop(self) -> None:
        channel = grpc.insecure_channel(self._config.scheduler_address)
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        delay = SEND_INTERVAL_S
        try:
            while True:
                stopping = self._stop.wait(delay)
                self._collect()
                delay = SEND_INTERVAL_S
                while self._pending:
                    if not self._send(stub, self._pending[:BATCH_POINTS]):
                        delay = 1.0
                        break
                    del self._pending[:BATCH_POINTS]
                if stopping:
                    return
        except Exception:
            logger.exception("sending metrics failed")
        finally:
            channel.close()

    def _send(self, stub: scheduler_pb2_grpc.SchedulerServiceStub, batch: list[run_pb2.MetricPoint]) -> bool:
        request = scheduler_pb2.ReportRunMetricsRequest(
            name=self._config.run, attempt=self._config.attempt, run_token=self._config.run_token, points=batch
        )
        try:
            response = stub.ReportRunMetrics(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED):
                logger.warning("the scheduler refused metrics (%s); dropping %d points", code, len(batch))
                return True
            if self._stop.is_set():
                logger.warning("could not send %d metric points at the end: %s", len(batch), code)
                self._pending.clear()
                return False
            return False
        self.points_sent += len(batch)
        self.cancel_requested = self.cancel_requested or response.cancel_requested
        return True


def _timestamp(time_ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time_ns)
    return stamp


def write_parameters_file(config: RunnerConfig, variable: str = "DLAAS_HPARAMS") -> dict[str, str]:
    """An experiment's trial gets its parameters as JSON in DLAAS_HPARAMS; the command also finds
    them in a file, named by DLAAS_HPARAMS_FILE. Returns the variables to add."""
    text = config.environment.get(variable)
    if text is None:
        return {}
    path = config.dirs.job / "hparams.json"
    path.write_text(text)
    os.chmod(path, 0o644)
    return {"DLAAS_HPARAMS_FILE": str(path)}
