"""The scheduler's view of runs and nodes, as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlaas.types.v1 import run_pb2

QUEUED: int = run_pb2.RUN_STATE_QUEUED
ASSIGNED: int = run_pb2.RUN_STATE_ASSIGNED
DOWNLOADING: int = run_pb2.RUN_STATE_DOWNLOADING
RUNNING: int = run_pb2.RUN_STATE_RUNNING
UPLOADING: int = run_pb2.RUN_STATE_UPLOADING
COMPLETED: int = run_pb2.RUN_STATE_COMPLETED
FAILED: int = run_pb2.RUN_STATE_FAILED
CANCELLED: int = run_pb2.RUN_STATE_CANCELLED

TERMINAL: frozenset[int] = frozenset({COMPLETED, FAILED, CANCELLED})
# States in which a runner holds GPUs.
LIVE: frozenset[int] = frozenset({ASSIGNED, DOWNLOADING, RUNNING, UPLOADING})
_ORDER: dict[int, int] = {QUEUED: 0, ASSIGNED: 1, DOWNLOADING: 2, RUNNING: 3, UPLOADING: 4}


def state_name(state: int) -> str:
    return run_pb2.RunState.Name(state).removeprefix("RUN_STATE_")  # type: ignore[arg-type]


def may_advance(current: int, reported: int) -> bool:
    """A runner may move a live run forward, or end it; never backwards."""
    if current in TERMINAL:
        return False
    if reported in TERMINAL:
        return True
    return reported in _ORDER and _ORDER[reported] > _ORDER.get(current, 99)


@dataclass(frozen=True)
class Node:
    name: str
    gpu_type: str
    gpu_count: int


@dataclass(frozen=True)
class QueuedRun:
    name: str
    account: str
    tier: str
    gpus: int
    gpu_type: str
    created_ms: int


@dataclass(frozen=True)
class LiveRun:
    name: str
    account: str
    node: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Assignment:
    run: str
    node: str
    gpu_type: str
    gpu_indices: tuple[int, ...]


@dataclass
class Decisions:
    assignments: list[Assignment] = field(default_factory=list)
    # run name → (1-based position in its account's queue, why it waits)
    waiting: dict[str, tuple[int, str]] = field(default_factory=dict)
