"""What a run's attempts held their GPUs for, read from its state transitions: what metering
bills (GPUs × (close − ASSIGNED)). One reader for the tests, the benchmarks and the GPU check."""

from __future__ import annotations

from dlaas.gateway.v1 import gateway_pb2
from dlaas.types.v1 import run_pb2

_ENDS = {run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED, run_pb2.RUN_STATE_QUEUED}


def attempt_intervals(run: gateway_pb2.Run) -> dict[int, tuple[int, int | None]]:
    """attempt → (ASSIGNED time, close time) from the run's transitions: an attempt closes at the
    run's end, or when it was lost and queued again; None while it still holds its GPUs."""
    intervals: dict[int, tuple[int, int | None]] = {}
    attempt, opened = 0, None
    for transition in run.status.transitions:
        time_ms = transition.time.ToMilliseconds()
        if transition.state == run_pb2.RUN_STATE_ASSIGNED:
            attempt, opened = attempt + 1, time_ms
            intervals[attempt] = (time_ms, None)
        elif opened is not None and transition.state in _ENDS:
            intervals[attempt] = (opened, time_ms)
            opened = None
    return intervals
