"""Property-based tests of the pure scheduling core: random clusters, accounts, tiers, churn."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.domain.model import Allocation, Decisions, LiveRun, Node, QueuedRun, TierLimits
from services.scheduler.domain.placement import FitCheck, decide, free_gpu_count, never_fits

TYPES = ["a100", "h100", "v100"]


@st.composite
def clusters(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 6))
    return [
        Node(
            f"n{i}",
            draw(st.sampled_from(TYPES)),
            draw(st.sampled_from([1, 2, 4, 8])),
            schedulable=draw(st.booleans()) or i == 0,
        )
        for i in range(count)
    ]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[Node], dict[str, TierLimits], list[QueuedRun]]:
    nodes = draw(clusters())
    accounts = [f"acct{i}" for i in range(draw(st.integers(1, 4)))]
    tiers = {
        a: TierLimits(max_gpus=draw(st.sampled_from([1, 2, 4, 8, 16])), weight=draw(st.sampled_from([1.0, 2.0, 4.0])))
        for a in accounts
    }
    runs = [
        QueuedRun(
            name=f"r{i}",
            account=draw(st.sampled_from(accounts)),
            gpus=draw(st.sampled_from([0, 1, 1, 2, 4, 8])),
            gpu_type=draw(st.sampled_from(["", "", *TYPES])),
            created_ms=i,
            learners=draw(st.sampled_from([1, 1, 1, 2])),
            priority=draw(st.sampled_from([0, 0, 1])),
            max_runtime_ms=draw(st.sampled_from([0, 1000, 5000])),
        )
        for i in range(draw(st.integers(0, 25)))
    ]
    return nodes, tiers, runs


def simulate(
    nodes: list[Node], tiers: dict[str, TierLimits], runs: list[QueuedRun], rounds: int = 60
) -> Iterator[tuple[int, Decisions, list[LiveRun], list[QueuedRun]]]:
    """Decision rounds with finishes in between; yields (decisions, live) after each round."""
    schedulable = [n for n in nodes if n.schedulable]
    pending = [r for r in runs if never_fits(r, tiers[r.account], schedulable) is None]
    live: list[LiveRun] = []
    by_name = {r.name: r for r in runs}
    clock = 0
    for round_number in range(rounds):
        decisions = decide(pending, live, nodes, tiers, now_ms=clock)
        started = {a.run for a in decisions.assignments}
        for assignment in decisions.assignments:
            run = by_name[assignment.run]
            live.append(LiveRun(run.name, run.account, assignment.allocations, clock + (run.max_runtime_ms or 10_000)))
        pending = [r for r in pending if r.name not in started]
        yield round_number, decisions, list(live), list(pending)
        # The oldest live run finishes before the next round.
        if live:
            live.sort(key=lambda r: r.deadline_ms)
            clock = max(clock, live[0].deadline_ms)
            live.pop(0)
        if not pending and not live:
            return


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_never_more_gpus_than_nodes_have_nor_than_tiers_allow(workload) -> None:
    nodes, tiers, runs = workload
    capacity = {n.name: n.gpu_count for n in nodes}
    for _, decisions, live, _ in simulate(nodes, tiers, runs):
        per_node: dict[str, set[int]] = defaultdict(set)
        per_account: dict[str, int] = defaultdict(int)
        for holder in live:
            per_account[holder.account] += holder.total_gpus
            for allocation in holder.allocations:
                assert not per_node[allocation.node] & set(allocation.gpu_indices), "a GPU given twice"
                per_node[allocation.node] |= set(allocation.gpu_indices)
                assert all(0 <= i < capacity[allocation.node] for i in allocation.gpu_indices)
        for account, used in per_account.items():
            assert used <= tiers[account].max_gpus
        drained = {n.name for n in nodes if not n.schedulable}
        for assignment in decisions.assignments:
            assert not {a.node for a in assignment.allocations} & drained


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_gangs_are_all_or_nothing_on_one_gpu_type_and_learners_keep_to_one_node(workload) -> None:
    nodes, tiers, runs = workload
    by_name = {r.name: r for r in runs}
    types = {n.name: n.gpu_type for n in nodes}
    for _, decisions, _, _ in simulate(nodes, tiers, runs):
        for assignment in decisions.assignments:
            run = by_name[assignment.run]
            assert len(assignment.allocations) == run.learners
            assert all(len(a.gpu_indices) == run.gpus for a in assignment.allocations)
            assert len({types[a.node] for a in assignment.allocations}) == 1
            if run.gpu_type and run.gpus:
                assert all(types[a.node] == run.gpu_type for a in assignment.allocations)


@settings(max_examples=200, deadline=None)
@given(workloads())
def test_every_run_that_can_fit_starts_in_a_bounded_number_of_rounds(workload) -> None:
    nodes, tiers, runs = workload
    fitting = [r for r in runs if never_fits(r, tiers[r.account], [n for n in nodes if n.schedulable]) is None]
    last_pending: list[QueuedRun] = []
    rounds = 0
    for rounds, _, _, pending in simulate(nodes, tiers, runs, rounds=4 * len(runs) + 5):  # noqa: B007
        last_pending = pending
    assert not last_pending, f"still queued after {rounds} rounds: {[r.name for r in last_pending]} of {len(fitting)}"


def test_fair_share_splits_a_contended_cluster_by_weight() -> None:
    nodes = [Node(f"n{i}", "h100", 8) for i in range(4)]  # 32 GPUs
    tiers = {"heavy": TierLimits(max_gpus=64, weight=3.0), "light": TierLimits(max_gpus=64, weight=1.0)}
    runs = [QueuedRun(f"{a}-{i}", a, 1, "", i * 2 + (a == "light"), 1) for a in tiers for i in range(40)]
    decisions = decide(runs, [], nodes, tiers)
    started: dict[str, int] = defaultdict(int)
    by_name = {r.name: r for r in runs}
    for assignment in decisions.assignments:
        started[by_name[assignment.run].account] += 1
    assert started["heavy"] + started["light"] == 32
    assert abs(started["heavy"] - 24) <= 1 and abs(started["light"] - 8) <= 1


def test_one_user_cannot_take_the_cluster_from_another() -> None:
    nodes = [Node("n0", "h100", 8)]
    tiers = {"hog": TierLimits(max_gpus=8), "late": TierLimits(max_gpus=8)}
    queued = [QueuedRun(f"hog-{i}", "hog", 1, "", i) for i in range(20)] + [QueuedRun("late-0", "late", 1, "", 100)]
    live = [LiveRun(f"hog-run-{i}", "hog", (Allocation("n0", "h100", (i,)),)) for i in range(4)]
    decisions = decide(queued, live, nodes, tiers)
    assert "late-0" in {a.run for a in decisions.assignments}


def test_backfill_only_when_it_does_not_delay_the_blocked_head() -> None:
    nodes = [Node("n0", "h100", 4)]
    tiers = {"a": TierLimits(max_gpus=8), "b": TierLimits(max_gpus=8), "c": TierLimits(max_gpus=8)}
    # 3 GPUs busy until t=10_000; the head needs 2 and gets the free one reserved.
    live = [LiveRun("busy", "c", (Allocation("n0", "h100", (0, 1, 2)),), deadline_ms=10_000)]
    head = QueuedRun("head", "a", 2, "", created_ms=1, max_runtime_ms=60_000)
    long_small = QueuedRun("long", "a", 1, "", created_ms=2, max_runtime_ms=60_000)
    short_small = QueuedRun("short", "a", 1, "", created_ms=3, max_runtime_ms=5_000)
    decisions = decide([head, long_small, short_small], live, nodes, tiers, now_ms=0)
    started = {a.run for a in decisions.assignments}
    assert started == {"short"}, started
    assert decisions.waiting["head"].estimated_start_ms == 10_000
    assert "reserved" in decisions.waiting["head"].reason


def test_quota_holds_the_account_and_says_why() -> None:
    nodes = [Node("n0", "virtual", 4)]
    tiers = {"free": TierLimits(max_gpus=1)}
    runs = [QueuedRun(f"r{i}", "free", 1, "", i) for i in range(3)]
    decisions = decide(runs, [], nodes, tiers)
    assert [a.run for a in decisions.assignments] == ["r0"]
    assert decisions.waiting["r1"].position == 1 and decisions.waiting["r1"].reason.startswith("quota")
    assert decisions.waiting["r2"].position == 2


def test_runs_that_can_never_fit_say_why() -> None:
    nodes = [Node("n0", "h100", 4), Node("n1", "v100", 8)]
    tier = TierLimits(max_gpus=16)
    assert "largest suitable node has 4" in (never_fits(QueuedRun("x", "a", 8, "h100", 0), tier, nodes) or "")
    assert "no node has GPUs of type 'k80'" in (never_fits(QueuedRun("x", "a", 1, "k80", 0), tier, nodes) or "")
    assert "allows at most 16" in (never_fits(QueuedRun("x", "a", 8, "", 0, learners=3), tier, nodes) or "")
    assert never_fits(QueuedRun("x", "a", 8, "", 0, learners=2), TierLimits(max_gpus=16), nodes) is not None
    assert never_fits(QueuedRun("x", "a", 4, "", 0, learners=2), tier, nodes) is None


@settings(max_examples=100, deadline=None)
@given(
    nodes=clusters(),
    asks=st.lists(
        st.tuples(
            st.integers(0, 12),
            st.sampled_from(["", "A100", "a100", "h100", "H100", "k80"]),
            st.integers(1, 3),
            st.sampled_from([TierLimits(1), TierLimits(16), TierLimits(16, allowed_gpu_types=frozenset({"a100"}))]),
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_a_fit_check_answers_each_run_as_never_fits_does(
    nodes: list[Node], asks: list[tuple[int, str, int, TierLimits]]
) -> None:
    """The scheduler asks once per run shape and tier (a check places the run on every node):
    what it remembers is what never_fits answers for each run, whatever was asked before."""
    check = FitCheck(nodes)
    for i, (gpus, gpu_type, learners, tier) in enumerate(asks):
        run = QueuedRun(f"r{i}", "a", gpus, gpu_type, i, learners=learners)
        assert check.why_never(run, tier) == never_fits(run, tier, nodes)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0]), min_size=2, max_size=5),
    nodes=st.integers(1, 6),
)
def test_fair_shares_under_contention_follow_the_weights(weights: list[float], nodes: int) -> None:
    cluster = [Node(f"n{i}", "h100", 8) for i in range(nodes)]
    capacity = 8 * nodes
    tiers = {f"a{i}": TierLimits(max_gpus=1000, weight=w) for i, w in enumerate(weights)}
    # Every account wants the whole cluster, in 1-GPU runs.
    runs = [QueuedRun(f"a{i}-{j}", f"a{i}", 1, "", j * 10 + i) for i in range(len(weights)) for j in range(capacity)]
    decisions = decide(runs, [], cluster, tiers)
    held: dict[str, int] = defaultdict(int)
    for assignment in decisions.assignments:
        held[assignment.run.split("-")[0]] += 1
    assert sum(held.values()) == capacity
    for account, tier in tiers.items():
        fair = capacity * tier.weight / sum(weights)
        # Whole GPUs cannot split exactly: no divisor method keeps every share within one GPU.
        assert abs(held[account] - fair) < 2, (held, weights)


@settings(max_examples=200, deadline=None)
@given(workloads())
def test_while_no_gpu_is_free_no_run_with_gpus_can_start(workload) -> None:
    """The runtime skips rounds for arrivals while no GPU is free: safe only if no round could place one."""
    nodes, tiers, runs = workload
    schedulable = {n.name: n.gpu_count for n in nodes if n.schedulable}
    for _, _, live, pending in simulate(nodes, tiers, runs):
        free = free_gpu_count(nodes, [r.allocations for r in live])
        held = sum(len(a.gpu_indices) for r in live for a in r.allocations if a.node in schedulable)
        assert free == sum(schedulable.values()) - held
        if free == 0:
            again = decide(pending, live, nodes, tiers)
            assert all(not a.gpu_indices for x in again.assignments for a in x.allocations)
