"""make bench-scheduler: the pure scheduling core on a simulated cluster with churn.

1,000 nodes × 8 GPUs of 3 types, 100 accounts in 3 tiers, 10,000 queued runs of 1, 2, 4 and 8
GPUs and 2-node gangs (2 learners × 8 GPUs), then churn: runs finish at their (simulated) end
and new ones arrive. Every round decides for every queued run (start now, or wait and why).

Figures (last line):
- decisions_per_s: queued runs decided (started or told why they wait) per second of decision time;
- admissions_per_s: runs started per second of decision time;
- p99_decision_ms: the 99th percentile of one round's time during churn;
- gpu_utilization: busy GPU-time over available GPU-time while the queue is not empty (simulated clock);
- submit_check_us: the check each submission gets (could the run ever fit: FitCheck, remembered
  per run shape and tier), per run of the initial queue; uncached_check_us: the same check made
  afresh (never_fits places the run on every node), on 200 of them.

The core is measured alone (no database, no gRPC): the service adds the reads of its state per round.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time

from services.scheduler.domain.model import LiveRun, Node, QueuedRun, TierLimits
from services.scheduler.domain.placement import FitCheck, decide, never_fits

TYPES = ["a100", "h100", "l4"]
SHAPES = [(1, 1), (2, 1), (4, 1), (8, 1), (8, 2)]  # (GPUs per learner, learners)
SHAPE_WEIGHTS = [40, 25, 15, 12, 8]
TIERS = {
    "free": TierLimits(max_gpus=16, weight=1.0),
    "standard": TierLimits(max_gpus=256, weight=2.0),
    "premium": TierLimits(max_gpus=2048, weight=4.0),
}


def make_run(rng: random.Random, index: int, accounts: list[str], now_ms: int) -> QueuedRun:
    gpus, learners = rng.choices(SHAPES, SHAPE_WEIGHTS)[0]
    gpu_type = rng.choice(["", "", *TYPES])
    duration_ms = rng.randint(60_000, 1_800_000)
    return QueuedRun(f"r{index}", rng.choice(accounts), gpus, gpu_type, now_ms + index % 1000, learners, 0, duration_ms)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    nodes = [Node(f"node{i:04d}", TYPES[i % 3], 8) for i in range(args.nodes)]
    total_gpus = sum(n.gpu_count for n in nodes)
    accounts = [f"acct{i:03d}" for i in range(100)]
    tier_names = list(TIERS)
    tiers = {a: TIERS[tier_names[i % 3]] for i, a in enumerate(accounts)}

    now = 0
    queued = [make_run(rng, i, accounts, now) for i in range(args.queued)]
    next_index = len(queued)
    live: list[LiveRun] = []
    ends: list[tuple[int, str]] = []  # (end time, run) heap of the simulated clock
    durations = {r.name: r.max_runtime_ms for r in queued}

    check = FitCheck(nodes)
    started = time.perf_counter()
    for run in queued:
        check.why_never(run, tiers[run.account])
    submit_check_us = (time.perf_counter() - started) * 1e6 / len(queued)
    sample = queued[:200]
    started = time.perf_counter()
    for run in sample:
        never_fits(run, tiers[run.account], nodes)
    uncached_check_us = (time.perf_counter() - started) * 1e6 / len(sample)

    decided = admitted = 0
    decision_seconds = 0.0
    churn_round_ms: list[float] = []
    busy_gpu_ms = available_gpu_ms = 0

    for round_number in range(args.rounds + 1):
        started = time.perf_counter()
        decisions = decide(queued, live, nodes, tiers, now_ms=now)
        elapsed = time.perf_counter() - started
        decision_seconds += elapsed
        if round_number > 0:
            churn_round_ms.append(elapsed * 1000)
        decided += len(queued)
        admitted += len(decisions.assignments)
        started_names = {a.run for a in decisions.assignments}
        by_name = {r.name: r for r in queued}
        for assignment in decisions.assignments:
            run = by_name[assignment.run]
            live.append(LiveRun(run.name, run.account, assignment.allocations, now + durations[run.name]))
            # Runs end before their enforced max runtime, at a random share of it.
            heapq.heappush(ends, (now + int(durations[run.name] * rng.uniform(0.3, 1.0)), run.name))
        queued = [r for r in queued if r.name not in started_names]

        # Advance the simulated clock to the next end; new runs arrive meanwhile.
        if not ends:
            break
        end_time, finished = heapq.heappop(ends)
        busy = sum(r.total_gpus for r in live)
        if queued:
            busy_gpu_ms += busy * (end_time - now)
            available_gpu_ms += total_gpus * (end_time - now)
        now = end_time
        live = [r for r in live if r.name != finished]
        for _ in range(rng.choice([0, 1, 1, 2])):
            run = make_run(rng, next_index, accounts, now)
            durations[run.name] = run.max_runtime_ms
            queued.append(run)
            next_index += 1

    utilization = busy_gpu_ms / available_gpu_ms if available_gpu_ms else 0.0
    p99 = statistics.quantiles(churn_round_ms, n=100)[98] if len(churn_round_ms) >= 2 else 0.0
    print(f"nodes={args.nodes} gpus={total_gpus} initial_queue={args.queued} rounds={args.rounds} seed={args.seed}")
    print(
        f"decisions_per_s={decided / decision_seconds:.0f} admissions_per_s={admitted / decision_seconds:.0f} "
        f"p99_decision_ms={p99:.1f} gpu_utilization={utilization:.3f} "
        f"submit_check_us={submit_check_us:.1f} uncached_check_us={uncached_check_us:.0f}"
    )


if __name__ == "__main__":
    main()
