"""Delivering progress to the scheduler (SchedulerService.ReportRunProgress), off the main thread.

Updates go out in order from one background thread, so a scheduler that is down or restarting
never holds up the run itself: the runner stages, starts, stops and uploads on time and the
reports catch up. Each update is tried at least once; a non-terminal one is retried with
exponential backoff for up to 30 s, and no longer once a newer update is waiting; the terminal
one is retried for up to an hour. NOT_FOUND, FAILED_PRECONDITION, PERMISSION_DENIED and
UNAUTHENTICATED mean the scheduler no longer wants this attempt: ``taken_away`` is set and
nothing more is sent. One exception: FAILED_PRECONDITION in answer to a resent non-terminal
update means the first try was applied (the scheduler does not move a run to the state it is
in), so the update counts as delivered.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2

from dlaas.runner.config import RunnerConfig
from dlaas.runner.state import Progress, StateFile
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.types.v1 import run_pb2

logger = logging.getLogger("dlaas.runner")

CALL_TIMEOUT_S = 5.0
# Reconnect quickly once a restarted scheduler listens again (gRPC's default backoff reaches 2 min).
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
_TRACE_KEYS = ("traceparent", "tracestate")


@dataclass(frozen=True)
class RetryPolicy:
    budget_s: float
    initial_delay_s: float = 0.1
    max_delay_s: float = 5.0

    def delays(self) -> Iterator[float]:
        """Backoff delays with ±20 % jitter (many runners may wait on one restarting scheduler)."""
        delay = self.initial_delay_s
        while True:
            yield delay * random.uniform(0.8, 1.2)
            delay = min(delay * 2, self.max_delay_s)


NON_TERMINAL_RETRY = RetryPolicy(budget_s=30.0)
TERMINAL_RETRY = RetryPolicy(budget_s=3600.0)


class Reporter:
    """Sends ``Progress`` updates in order; ``wake`` is called when the main thread should look
    at ``cancel_requested`` or ``taken_away``."""

    def __init__(
        self,
        config: RunnerConfig,
        state_file: StateFile,
        wake: Callable[[], None],
        *,
        non_terminal_retry: RetryPolicy = NON_TERMINAL_RETRY,
        terminal_retry: RetryPolicy = TERMINAL_RETRY,
    ) -> None:
        self._config = config
        self._state_file = state_file
        self._wake = wake
        self._non_terminal_retry = non_terminal_retry
        self._terminal_retry = terminal_retry
        self._metadata = _trace_metadata(config.trace_carrier)
        self._queue: collections.deque[Progress] = collections.deque()
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="dlaas-reporter", daemon=True)
        self._terminal_done = threading.Event()
        self._terminal_delivered = False
        self.cancel_requested = False
        self.taken_away: str | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, progress: Progress) -> None:
        with self._changed:
            self._queue.append(progress)
            self._changed.notify_all()

    def wait_terminal(self, timeout_s: float) -> bool:
        """Wait until the terminal update was acknowledged (True) or given up on (False)."""
        self._terminal_done.wait(timeout_s)
        return self._terminal_delivered

    def close(self, timeout_s: float = 1.0) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _next(self) -> Progress | None:
        with self._changed:
            while not self._queue and not self._closing:
                self._changed.wait()
            return self._queue.popleft() if self._queue else None

    def _newer_waiting(self) -> bool:
        with self._changed:
            return bool(self._queue)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, unless the reporter is closing (then False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._closing, seconds)
            return not self._closing

    def _loop(self) -> None:
        channel = grpc.insecure_channel(self._config.scheduler_address, options=_CHANNEL_OPTIONS)
        try:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            while (progress := self._next()) is not None:
                delivered = self._deliver(stub, progress)
                if progress.terminal or self.taken_away is not None:
                    self._terminal_delivered = delivered and progress.terminal
                    break
        except Exception:
            logger.exception("reporting to the scheduler failed")
        finally:
            self._terminal_done.set()
            channel.close()

    def _deliver(self, stub: scheduler_pb2_grpc.SchedulerServiceStub, progress: Progress) -> bool:
        request = self._request(progress)
        policy = self._terminal_retry if progress.terminal else self._non_terminal_retry
        deadline = time.monotonic() + policy.budget_s
        state_name = _state_name(progress)
        resent = False  # an earlier try failed after the request may have reached the scheduler
        for delay in policy.delays():
            try:
                response = stub.ReportRunProgress(request, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
            except grpc.RpcError as error:
                code = _code_of(error)
                detail = f"{code.name if code else 'UNKNOWN'}: {_details_of(error)}"
                if code == grpc.StatusCode.FAILED_PRECONDITION and resent and not progress.terminal:
                    # The scheduler refuses a state it already has: our earlier try was applied
                    # and only its answer was lost. Not a reason to stop the command.
                    logger.warning("scheduler refused a resent %s (%s): taking it as applied", state_name, detail)
                    return True
                if code in _TAKEN_AWAY_CODES:
                    logger.warning("scheduler refused %s (%s): this attempt was taken away", state_name, detail)
                    self.taken_away = detail
                    self._wake()
                    return False
                if code not in _RETRYABLE_CODES:
                    logger.error("scheduler refused %s (%s): not retrying", state_name, detail)
                    return False
                if time.monotonic() + delay > deadline:
                    logger.error("gave up reporting %s after %.0f s (%s)", state_name, policy.budget_s, detail)
                    return False
                if not progress.terminal and self._newer_waiting():
                    logger.warning("skipping report of %s (%s): a newer state is waiting", state_name, detail)
                    return False
                logger.info("reporting %s failed (%s); retrying in %.1f s", state_name, detail, delay)
                resent = True
                if not self._sleep(delay):
                    return False
                continue
            self._state_file.mark_reported(progress)
            if response.cancel_requested and not progress.terminal and not self.cancel_requested:
                self.cancel_requested = True
                self._wake()
            return True
        raise AssertionError("unreachable: delays() never ends")

    def _request(self, progress: Progress) -> scheduler_pb2.ReportRunProgressRequest:
        event_time = timestamp_pb2.Timestamp()
        event_time.FromNanoseconds(progress.event_time_ns)
        return scheduler_pb2.ReportRunProgressRequest(
            name=self._config.run,
            attempt=self._config.attempt,
            run_token=self._config.run_token,
            state=progress.state,
            event_time=event_time,
            exit_code=progress.exit_code,
            termination_reason=progress.termination_reason,
            message=progress.message,
            log_tail=progress.log_tail,
        )


def _state_name(progress: Progress) -> str:
    return run_pb2.RunState.Name(progress.state)


def _trace_metadata(carrier: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    lowered = {key.lower(): value for key, value in carrier.items()}
    return tuple((key, lowered[key]) for key in _TRACE_KEYS if lowered.get(key))


def _code_of(error: grpc.RpcError) -> grpc.StatusCode | None:
    # Errors raised by a call are also grpc.Call objects, which carry the status.
    code = error.code() if isinstance(error, grpc.Call) else None
    return code if isinstance(code, grpc.StatusCode) else None


def _details_of(error: grpc.RpcError) -> str:
    details = error.details() if isinstance(error, grpc.Call) else None
    return str(details) if details else "no details"


_TAKEN_AWAY_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
