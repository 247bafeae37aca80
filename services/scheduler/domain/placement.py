"""One decision round: which queued runs start now, where, and why the others wait. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from services.scheduler.domain.model import Assignment, Decisions, LiveRun, Node, QueuedRun

VIRTUAL = "virtual"


def gpu_type_matches(wanted: str, node: Node) -> bool:
    """Virtual slots (a machine without GPUs) stand in for any GPU type, so any manifest runs there."""
    return not wanted or node.gpu_type == VIRTUAL or wanted.lower() == node.gpu_type.lower()


def never_fits(gpus: int, gpu_type: str, tier_max_gpus: int, nodes: Sequence[Node]) -> str | None:
    """Why a run could never start on this platform, or None when it could."""
    if gpus > tier_max_gpus:
        return f"needs {gpus} GPUs but the account's tier allows at most {tier_max_gpus} at once"
    if gpus == 0:
        return None
    candidates = [n for n in nodes if gpu_type_matches(gpu_type, n)]
    if not candidates:
        kinds = sorted({n.gpu_type for n in nodes}) or ["none"]
        return f"no node has GPUs of type {gpu_type!r} (available: {', '.join(kinds)})"
    largest = max(n.gpu_count for n in candidates)
    if gpus > largest:
        return f"needs {gpus} GPUs on one node but the largest suitable node has {largest}"
    return None


def decide(
    queued: Sequence[QueuedRun],
    live: Sequence[LiveRun],
    nodes: Sequence[Node],
    tier_max_gpus: Mapping[str, int],
) -> Decisions:
    """Admits every queued run that fits now, in arrival order within each account.

    An account's runs start in order: a head that waits keeps the account's later runs waiting
    (no overtaking inside an account). Placement is best fit: the node with the fewest free GPUs
    that still fits, to keep large blocks free.
    """
    free: dict[str, set[int]] = {n.name: set(range(n.gpu_count)) for n in nodes}
    by_node = {n.name: n for n in nodes}
    in_use: dict[str, int] = defaultdict(int)
    for holder in live:
        free.get(holder.node, set()).difference_update(holder.gpu_indices)
        in_use[holder.account] += len(holder.gpu_indices)

    decisions = Decisions()
    blocked_accounts: dict[str, str] = {}
    positions: dict[str, int] = defaultdict(int)
    for run in sorted(queued, key=lambda r: (r.created_ms, r.name)):
        positions[run.account] += 1
        if run.account in blocked_accounts:
            decisions.waiting[run.name] = (positions[run.account], blocked_accounts[run.account])
            continue
        limit = tier_max_gpus.get(run.tier, 0)
        reason = _wait_reason(run, in_use[run.account], limit)
        node = None if reason else _best_fit(run, nodes, free)
        if reason is None and node is None:
            reason = f"waiting for {run.gpus} free GPU(s){' of type ' + run.gpu_type if run.gpu_type else ''}"
        if reason is not None or node is None:
            blocked_accounts[run.account] = "behind an earlier run of the account"
            decisions.waiting[run.name] = (positions[run.account], reason or "")
            continue
        indices = tuple(sorted(free[node])[: run.gpus])
        free[node].difference_update(indices)
        in_use[run.account] += run.gpus
        positions[run.account] -= 1
        decisions.assignments.append(Assignment(run.name, node, by_node[node].gpu_type, indices))
    return decisions


def _wait_reason(run: QueuedRun, account_in_use: int, limit: int) -> str | None:
    if account_in_use + run.gpus > limit:
        return f"quota: the account's tier allows {limit} GPU(s) at once and {account_in_use} are in use"
    return None


def _best_fit(run: QueuedRun, nodes: Sequence[Node], free: Mapping[str, set[int]]) -> str | None:
    fitting = [n for n in nodes if gpu_type_matches(run.gpu_type, n) and len(free[n.name]) >= run.gpus]
    if not fitting:
        return None
    return min(fitting, key=lambda n: (len(free[n.name]), n.name)).name
