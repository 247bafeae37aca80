"""The scheduler's view of runs, nodes and tiers, as plain values."""

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
# States in which a run holds GPUs.
LIVE: frozenset[int] = frozenset({ASSIGNED, DOWNLOADING, RUNNING, UPLOADING})
_ORDER: dict[int, int] = {QUEUED: 0, ASSIGNED: 1, DOWNLOADING: 2, RUNNING: 3, UPLOADING: 4}

# GPU slots of a machine without GPUs: they stand in for any GPU type.
VIRTUAL = "virtual"


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
class TierLimits:
    """What an account of a tier may use (the pure part of the tier configuration)."""

    max_gpus: int
    weight: float = 1.0
    allowed_gpu_types: frozenset[str] = frozenset()  # empty: any

    def allows_type(self, gpu_type: str) -> bool:
        return not self.allowed_gpu_types or gpu_type in self.allowed_gpu_types or gpu_type == VIRTUAL


@dataclass(frozen=True)
class Node:
    name: str
    gpu_type: str
    gpu_count: int
    schedulable: bool = True  # False once drained: its runs finish, no new ones start

    def serves(self, wanted: str) -> bool:
        return not wanted or self.gpu_type == VIRTUAL or wanted.lower() == self.gpu_type.lower()


@dataclass(frozen=True)
class QueuedRun:
    name: str
    account: str
    gpus: int  # per learner
    gpu_type: str
    created_ms: int
    learners: int = 1
    priority: int = 0
    max_runtime_ms: int = 0  # known upper bound of its runtime (enforced), used for backfill

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.learners


def queue_order(run: QueuedRun) -> tuple[int, int, str]:
    """An account's own queue: priority first, then arrival."""
    return (-run.priority, run.created_ms, run.name)


@dataclass(frozen=True)
class Allocation:
    """GPUs of one node given to one learner."""

    node: str
    gpu_type: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class LiveRun:
    name: str
    account: str
    allocations: tuple[Allocation, ...]
    deadline_ms: int = 0  # when it will have ended at the latest (assignment + max runtime); 0: unknown

    @property
    def total_gpus(self) -> int:
        return sum(len(a.gpu_indices) for a in self.allocations)


@dataclass(frozen=True)
class Assignment:
    run: str
    allocations: tuple[Allocation, ...]


@dataclass(frozen=True)
class Waiting:
    position: int  # 1-based, in its account's queue
    reason: str
    estimated_start_ms: int = 0  # 0: unknown


@dataclass
class Decisions:
    assignments: list[Assignment] = field(default_factory=list)
    waiting: dict[str, Waiting] = field(default_factory=dict)


def results_location(spec: run_pb2.RunSpec, run_id: str) -> run_pb2.ObjectLocation:
    """Where a run's results and logs go: `<results bucket>/<prefix>/<run id>/`."""
    prefix = "/".join(part for part in (spec.training_results.prefix.strip("/"), run_id) if part)
    return run_pb2.ObjectLocation(
        connection=spec.training_results.connection, bucket=spec.training_results.bucket, prefix=prefix
    )
