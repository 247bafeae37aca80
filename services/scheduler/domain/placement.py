"""One decision round: which queued runs start now, where, and why the others wait. Pure.

- Across accounts, weighted fair share: the next run considered is the head of the account with
  the smallest dominant share (GPUs in use, plus half its head, over its weight: Sainte-Laguë,
  so that whole GPUs divide closest to the weights). Within an account: priority, then arrival.
- No account ever goes over its tier's GPU limit; a head over quota holds its account's queue.
- Placement: every GPU of a learner on one node; a gang's learners all placed or none, on nodes
  of one GPU type; best fit (the node with the fewest free GPUs that fit) keeps large blocks free.
- Backfill (EASY): the first head that does not fit gets a reservation: the free GPUs it will
  use, and the time (shadow) by which enough running runs will have ended for it to start, from
  their enforced maximum runtimes. A later run may use reserved GPUs only if its own maximum
  runtime ends before the shadow time, so it never delays that head.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.scheduler.domain.model import (
    VIRTUAL,
    Allocation,
    Assignment,
    Decisions,
    LiveRun,
    Node,
    QueuedRun,
    TierLimits,
    Waiting,
    queue_order,
)


class FreeGpus:
    """Free GPU indices of the schedulable nodes, indexed by GPU type and free count for best fit."""

    def __init__(self, nodes: Iterable[Node]):
        self.nodes = {n.name: n for n in nodes if n.schedulable}
        self.free: dict[str, set[int]] = {name: set(range(n.gpu_count)) for name, n in self.nodes.items()}
        self._buckets: dict[str, list[set[str]]] = {}
        self._types = sorted({n.gpu_type.lower() for n in self.nodes.values()})
        width = max((n.gpu_count for n in self.nodes.values()), default=0) + 1
        for gpu_type in self._types:
            self._buckets[gpu_type] = [set() for _ in range(width)]
        for name, node in self.nodes.items():
            self._buckets[node.gpu_type.lower()][len(self.free[name])].add(name)

    def copy(self) -> FreeGpus:
        twin = FreeGpus.__new__(FreeGpus)
        twin.nodes = self.nodes
        twin.free = {name: set(indices) for name, indices in self.free.items()}
        twin._types = self._types
        twin._buckets = {t: [set(b) for b in buckets] for t, buckets in self._buckets.items()}
        return twin

    def _move(self, name: str, before: int) -> None:
        buckets = self._buckets[self.nodes[name].gpu_type.lower()]
        buckets[before].discard(name)
        buckets[len(self.free[name])].add(name)

    def take(self, name: str, indices: Iterable[int]) -> None:
        before = len(self.free[name])
        self.free[name].difference_update(indices)
        self._move(name, before)

    def give(self, name: str, indices: Iterable[int]) -> None:
        if name not in self.nodes:
            return
        before = len(self.free[name])
        self.free[name].update(i for i in indices if i < self.nodes[name].gpu_count)
        self._move(name, before)

    def types_for(self, wanted: str, allowed: frozenset[str]) -> list[str]:
        wanted = wanted.lower()
        types = [t for t in self._types if not wanted or t in (wanted, VIRTUAL)]
        if allowed:
            types = [t for t in types if t in allowed or t == VIRTUAL]
        return types

    def best_fit(self, types: Sequence[str], gpus: int) -> str | None:
        """The node with the fewest free GPUs that still has `gpus`, among `types`."""
        best: tuple[int, str] | None = None
        for gpu_type in types:
            buckets = self._buckets[gpu_type]
            for count in range(max(gpus, 1) if gpus else 0, len(buckets)):
                if buckets[count]:
                    candidate = (count, min(buckets[count]))
                    if best is None or candidate < best:
                        best = candidate
                    break
        return best[1] if best else None

    def place(self, run: QueuedRun, tier: TierLimits) -> tuple[Allocation, ...] | None:
        """Takes GPUs for every learner of `run`, or nothing at all."""
        # A run without GPUs only needs a node; its GPU type means nothing.
        types = self.types_for(run.gpu_type if run.gpus else "", tier.allowed_gpu_types if run.gpus else frozenset())
        if run.learners <= 1:
            return self._place_learners(run, types)
        # A gang's learners share one GPU type: try each type on its own.
        for gpu_type in types:
            allocations = self._place_learners(run, [gpu_type])
            if allocations is not None:
                return allocations
        return None

    def _place_learners(self, run: QueuedRun, types: Sequence[str]) -> tuple[Allocation, ...] | None:
        taken: list[Allocation] = []
        for _ in range(max(run.learners, 1)):
            name = self.best_fit(types, run.gpus)
            if name is None:
                for allocation in taken:
                    self.give(allocation.node, allocation.gpu_indices)
                return None
            node = self.nodes[name]
            indices = tuple(sorted(self.free[name])[: run.gpus])
            self.take(name, indices)
            taken.append(Allocation(name, node.gpu_type, indices))
        return tuple(taken)


def never_fits(run: QueuedRun, tier: TierLimits, nodes: Sequence[Node]) -> str | None:
    """Why a run could never start on this platform, even on empty nodes; None when it could."""
    if run.total_gpus > tier.max_gpus:
        return f"needs {run.total_gpus} GPUs but the account's tier allows at most {tier.max_gpus} at once"
    wanted = run.gpu_type.lower()
    if wanted and not tier.allows_type(wanted):
        allowed = ", ".join(sorted(tier.allowed_gpu_types))
        return f"the account's tier does not allow GPU type {wanted!r} (allowed: {allowed})"
    if run.gpus == 0:
        return None
    everything = [Node(n.name, n.gpu_type, n.gpu_count, True) for n in nodes]
    if FreeGpus(everything).place(run, tier) is not None:
        return None
    kinds = sorted({n.gpu_type for n in nodes if n.serves(wanted)})
    if not kinds:
        available = ", ".join(sorted({n.gpu_type for n in nodes})) or "none"
        return f"no node has GPUs of type {wanted!r} (available: {available})"
    largest = max(n.gpu_count for n in nodes if n.serves(wanted))
    if run.learners > 1:
        return f"needs {run.learners} learners × {run.gpus} GPUs of one type; the nodes cannot hold that gang"
    return f"needs {run.gpus} GPUs on one node but the largest suitable node has {largest}"


class FitCheck:
    """`never_fits` for one list of nodes, remembered per run shape and tier. It places the run
    on every node: ≈ 2 ms a check on a thousand nodes, which every submission would pay."""

    _MAX_SHAPES = 4096

    def __init__(self, nodes: Sequence[Node]):
        self.nodes = list(nodes)
        self._known: dict[tuple[int, str, int, TierLimits], str | None] = {}

    def why_never(self, run: QueuedRun, tier: TierLimits) -> str | None:
        """Why `run` could never start on these nodes, even empty; None when it could."""
        shape = (run.gpus, run.gpu_type.lower(), run.learners, tier)
        if shape not in self._known:
            if len(self._known) >= self._MAX_SHAPES:
                self._known.clear()
            self._known[shape] = never_fits(run, tier, self.nodes)
        return self._known[shape]


# Heads tried for a reservation per round: each try simulates the ends of running runs.
MAX_RESERVATION_TRIES = 4


@dataclass
class _Reservation:
    run: str
    shadow_ms: int
    gpus: dict[str, set[int]]  # node → reserved free indices


def free_gpu_count(nodes: Sequence[Node], held: Iterable[Sequence[Allocation]]) -> int:
    """GPUs of the schedulable nodes that no allocation in `held` holds."""
    free = FreeGpus(nodes)
    for allocations in held:
        for allocation in allocations:
            if allocation.node in free.nodes:
                free.take(allocation.node, allocation.gpu_indices)
    return sum(len(indices) for indices in free.free.values())


def decide(
    queued: Sequence[QueuedRun],
    live: Sequence[LiveRun],
    nodes: Sequence[Node],
    tiers: Mapping[str, TierLimits],
    now_ms: int = 0,
    held: Mapping[str, str] | None = None,
) -> Decisions:
    """Admits every queued run that fits now; says why each other one waits.

    `tiers` maps each account to its tier's limits (an account without an entry gets nothing).
    `held` names runs that must wait for a reason decided elsewhere (the monthly allowance): they
    keep their place in their account's queue but are not placed.
    """
    held = held or {}
    free = FreeGpus(nodes)
    in_use: dict[str, int] = defaultdict(int)
    for holder in live:
        in_use[holder.account] += holder.total_gpus
        for allocation in holder.allocations:
            if allocation.node in free.nodes:
                free.take(allocation.node, allocation.gpu_indices)

    queues: dict[str, list[QueuedRun]] = defaultdict(list)
    for run in queued:
        queues[run.account].append(run)
    for runs in queues.values():
        runs.sort(key=queue_order)

    decisions = Decisions()
    reasons: dict[str, str] = {}
    estimates: dict[str, int] = {}
    assigned: set[str] = set()
    reservation: _Reservation | None = None
    reservation_tries = 0
    cursor: dict[str, int] = defaultdict(int)

    def key(account: str) -> tuple[float, int, int, str]:
        head = queues[account][cursor[account]]
        weight = tiers[account].weight if account in tiers else 1.0
        # Weighted share counting half of the head (Sainte-Laguë): with whole GPUs this keeps every
        # account closest to its weighted share, neither the small nor the large favoured.
        share = (in_use[account] + head.total_gpus / 2) / max(weight, 1e-9)
        return (share, -head.priority, head.created_ms, account)

    heap = [key(a) for a in queues]
    heapq.heapify(heap)
    while heap:
        account = heapq.heappop(heap)[-1]
        run = queues[account][cursor[account]]
        tier = tiers.get(account, TierLimits(max_gpus=0))
        if run.name in held:
            reasons[run.name] = held[run.name]
        elif in_use[account] + run.total_gpus > tier.max_gpus:
            reasons[run.name] = (
                f"quota: the account's tier allows {tier.max_gpus} GPU(s) at once and {in_use[account]} are in use"
            )
            for later in queues[account][cursor[account] + 1 :]:
                reasons[later.name] = f"behind {run.name}, which waits for quota"
            continue
        else:
            allocations = _place(run, tier, free, reservation, now_ms)
            if allocations is not None:
                decisions.assignments.append(Assignment(run.name, allocations))
                assigned.add(run.name)
                in_use[account] += run.total_gpus
            else:
                reasons[run.name] = _capacity_reason(run, free, nodes)
                if reservation is None and run.gpus > 0 and reservation_tries < MAX_RESERVATION_TRIES:
                    reservation_tries += 1
                    reservation = _reserve(run, tier, free, live, nodes, now_ms)
                    if reservation is not None:
                        estimates[run.name] = reservation.shadow_ms
                        reasons[run.name] += "; GPUs are reserved for it (smaller runs may not delay it)"
        cursor[account] += 1
        if cursor[account] < len(queues[account]):
            heapq.heappush(heap, key(account))

    for runs in queues.values():
        position = 0
        for run in runs:
            if run.name in assigned:
                continue
            position += 1
            decisions.waiting[run.name] = Waiting(position, reasons.get(run.name, ""), estimates.get(run.name, 0))
    return decisions


def _place(
    run: QueuedRun, tier: TierLimits, free: FreeGpus, reservation: _Reservation | None, now_ms: int
) -> tuple[Allocation, ...] | None:
    allocations = free.place(run, tier)
    if allocations is not None or reservation is None:
        return allocations
    if not run.max_runtime_ms or now_ms + run.max_runtime_ms > reservation.shadow_ms:
        return None
    # It ends before the reserved head can start: it may borrow the reserved GPUs.
    for name, indices in reservation.gpus.items():
        free.give(name, indices)
    allocations = free.place(run, tier)
    for name, indices in reservation.gpus.items():
        still_free = indices & free.free.get(name, set())
        free.take(name, still_free)
        reservation.gpus[name] = still_free
    return allocations


def _capacity_reason(run: QueuedRun, free: FreeGpus, nodes: Sequence[Node]) -> str:
    kind = f" of type {run.gpu_type}" if run.gpu_type else ""
    if not any(n.schedulable and n.serves(run.gpu_type) for n in nodes):
        return f"GPU type: no schedulable node has GPUs{kind} (drained or absent)"
    shape = f"{run.learners} × {run.gpus}" if run.learners > 1 else str(run.gpus)
    return f"capacity: waiting for {shape} free GPU(s){kind} on one node"


def _reserve(
    run: QueuedRun,
    tier: TierLimits,
    free: FreeGpus,
    live: Sequence[LiveRun],
    nodes: Sequence[Node],
    now_ms: int,
) -> _Reservation | None:
    """The earliest time the run fits if running runs end by their deadlines, and what it will use."""
    ending = sorted((r for r in live if r.deadline_ms > 0), key=lambda r: r.deadline_ms)
    deadlines = [r.deadline_ms for r in ending]

    if not ending:
        return None  # nothing is known to end: no time to promise

    def placement_after(count: int) -> tuple[Allocation, ...] | None:
        trial = free.copy()
        for holder in ending[:count]:
            for allocation in holder.allocations:
                trial.give(allocation.node, allocation.gpu_indices)
        return trial.place(run, tier)

    if placement_after(len(ending)) is None:
        return None  # even then it does not fit (runs without deadlines hold the GPUs): no reservation
    # Feasibility only grows as more runs end: binary search the fewest endings needed.
    low, high = 1, len(ending)
    while low < high:
        middle = (low + high) // 2
        if placement_after(middle) is None:
            low = middle + 1
        else:
            high = middle
    allocations = placement_after(low)
    assert allocations is not None
    shadow = deadlines[low - 1] if ending else now_ms
    reserved: dict[str, set[int]] = {}
    for allocation in allocations:
        # Of what it will need there, the GPUs free now are held for it.
        now_free = set(sorted(free.free.get(allocation.node, set()))[: len(allocation.gpu_indices)])
        if now_free:
            reserved.setdefault(allocation.node, set()).update(now_free)
            free.take(allocation.node, now_free)
    return _Reservation(run.name, max(shadow, now_ms), reserved)


__all__ = ["FitCheck", "FreeGpus", "decide", "never_fits"]


def over_allowance(
    queued: Sequence[QueuedRun], remaining_ms: Mapping[str, int], hours: Mapping[str, float]
) -> dict[str, str]:
    """The runs whose GPUs × max runtime no longer fit their account's monthly allowance, and why.

    Taken in queue order, each run that fits uses up its share. Accounts without an allowance pass.
    """
    left = dict(remaining_ms)
    reasons: dict[str, str] = {}
    for run in sorted(queued, key=queue_order):
        if run.account not in left:
            continue
        need = run.total_gpus * run.max_runtime_ms
        if need <= left[run.account]:
            left[run.account] -= need
        else:
            reasons[run.name] = (
                f"allowance: the tier's {hours[run.account]:g} GPU-hours this month leave "
                f"{max(left[run.account], 0) / 3_600_000:.2f}; the run may need "
                f"{need / 3_600_000:.2f} (GPUs × max runtime): lower its max_runtime or wait for next month"
            )
    return reasons
