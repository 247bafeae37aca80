"""make bench-hpo-bound: how far early stopping can go on the digits sweep, from its trials' curves.

bench-hpo measures one sweep (seed 1) through the platform. This one asks what any early-stopping
rule could reach on the same search space, for several seeds: it trains each seed's trials
directly (examples/digits/train.py, `--parallel` at a time, no platform), records every epoch's
accuracy and time since the command started, and from those curves computes per seed

- oracle_ratio: GPU-seconds if every trial but the eventual best were stopped at ASHA's first
  rung, knowing the best in advance, over random search's (every trial to its end);
- asha_ratio, asha_lost: ASHA replayed on the curves with the manifest's settings and the
  platform's own stop rule (`Asha.continues` at each rung, `Asha.outranked` re-checked as rivals
  arrive), the same slots, each stop costing 0.5 s; and how much best accuracy it lost.

Start-up (interpreter, torch, data: the time to the first epoch's line) is paid by every trial,
stopped or not; its share of random's GPU-seconds is printed too. Curves are cached in
`--curves` (JSON lines), so a second run only replays. Last line:
`seeds=… oracle_ratio_max=… asha_ratio_mean=… asha_lost_max=… startup_share_mean=…`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlaas.runner.environment import thread_limits
from dlaas.runner.metrics import parse_line
from services.api_gateway.domain import search
from services.api_gateway.domain.experiments import ExperimentConfig, parse_experiment

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
SWEEP = ROOT / "examples" / "digits-sweep" / "manifest.yml"
STOP_COST_S = 0.5


@dataclass
class Curve:
    points: list[tuple[int, float, float]]  # (epoch, accuracy, seconds since the command started)
    seconds: float  # the whole command

    @property
    def best(self) -> float:
        return max(a for _, a, _ in self.points)

    def at(self, step: int) -> tuple[float, float] | None:
        """(accuracy, seconds) of the first point at or past `step`."""
        return next(((a, t) for s, a, t in self.points if s >= step), None)


def config(seed: int) -> ExperimentConfig:
    document = yaml.safe_load(SWEEP.read_text())
    document["experiment"]["seed"] = seed
    return parse_experiment(document["experiment"])


def train(parameters: dict[str, str], data: Path, cpus: float) -> Curve:
    with tempfile.TemporaryDirectory() as results:
        began = time.monotonic()
        command = [sys.executable, "train.py", "--epochs", parameters["epochs"], "--lr", parameters["lr"]]
        command += ["--hidden", parameters["hidden"], "--batch-size", parameters["batch_size"]]
        env = {**os.environ, "DATA_DIR": str(data), "RESULT_DIR": results, "CUDA_VISIBLE_DEVICES": ""}
        env |= thread_limits(cpus)  # as the platform sets them for the manifest's CPUs
        process = subprocess.Popen(command, cwd=DIGITS, env=env, stdout=subprocess.PIPE, text=True)
        points = []
        assert process.stdout is not None
        for line in process.stdout:  # read as the runner reads metrics lines
            for reading in parse_line(line):
                if reading.name == "accuracy":
                    points.append((reading.step, reading.value, time.monotonic() - began))
        if process.wait() != 0 or not points:
            raise RuntimeError(f"train.py failed for {parameters}")
        return Curve(points, time.monotonic() - began)


def curves(seeds: list[int], cache: Path, parallel: int) -> dict[int, dict[int, Curve]]:
    found: dict[int, dict[int, Curve]] = {seed: {} for seed in seeds}
    if cache.exists():
        for line in cache.read_text().splitlines():
            record = json.loads(line)
            if record["seed"] in found:
                found[record["seed"]][record["trial"]] = Curve([tuple(p) for p in record["points"]], record["seconds"])
    configs = {seed: config(seed) for seed in seeds}
    missing = [(s, t) for s in seeds for t in range(1, configs[s].max_runs + 1) if t not in found[s]]
    if missing:
        cpus = float(yaml.safe_load(SWEEP.read_text())["resources"].get("cpus", 1))
        data = Path(tempfile.mkdtemp(prefix="dlaas-hpo-bound-"))
        prepare = [sys.executable, str(DIGITS / "prepare_data.py"), str(data)]
        subprocess.run(prepare, check=True, stdout=subprocess.DEVNULL)

        def one(job: tuple[int, int]) -> None:
            seed, trial = job
            parameters = {k: search.render(v) for k, v in configs[seed].parameters(trial).items()}
            curve = train(parameters, data, cpus)
            found[seed][trial] = curve
            with cache.open("a") as out:
                out.write(json.dumps({"seed": seed, "trial": trial, "points": curve.points, "seconds": curve.seconds}))
                out.write("\n")

        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(one, missing))
    return found


def replay_asha(trials: dict[int, Curve], cfg: ExperimentConfig, slots: int) -> tuple[float, float]:
    """(GPU-seconds, best accuracy seen) of ASHA on the curves: trials start in order as slots free."""
    asha, goal, rungs = cfg.asha, cfg.goal, cfg.asha.rungs()
    queue, running = sorted(trials), dict[int, float]()  # trial → start
    recorded: dict[int, dict[int, float]] = {r: {} for r in rungs}
    passed: dict[int, list[int]] = {t: [] for t in trials}
    now = spent = 0.0
    best = float("-inf")
    while queue or running:
        while len(running) < slots and queue:
            running[queue.pop(0)] = now
        events: list[tuple[float, int, int | None, float | None]] = []
        for t, start in running.items():
            curve = trials[t]
            upcoming = [(r, hit) for r in rungs if r not in passed[t] and (hit := curve.at(r)) is not None]
            if upcoming:
                next_rung, (accuracy, at) = upcoming[0]
                events.append((start + at, t, next_rung, accuracy))
            else:
                events.append((start + curve.seconds, t, None, None))
        now, t, rung, value = min(events)
        if rung is None or value is None:
            spent += now - running.pop(t)
            best = max(best, trials[t].best)
            continue
        passed[t].append(rung)
        recorded[rung][t] = value
        best = max(best, max(a for s, a, _ in trials[t].points if s <= rung))
        stopped = set() if asha.continues(goal, list(recorded[rung].values()), value) else {t}
        for u in running:
            if u not in stopped and any(
                asha.outranked(goal, list(recorded[r].values()), recorded[r][u]) for r in passed[u]
            ):
                stopped.add(u)
        for u in stopped:
            spent += now + STOP_COST_S - running.pop(u)
    return spent, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--curves", type=Path, default=Path(tempfile.gettempdir()) / "dlaas-hpo-curves.jsonl")
    args = parser.parse_args()
    found = curves(args.seeds, args.curves, args.parallel)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        trials, cfg = found[seed], config(seed)
        random_s = sum(c.seconds for c in trials.values())
        best_trial = max(trials, key=lambda t: trials[t].best)
        first = cfg.asha.rungs()[0]
        oracle = sum((c.at(first) or (0.0, c.seconds))[1] for t, c in trials.items() if t != best_trial)
        oracle += trials[best_trial].seconds
        asha_s, asha_best = replay_asha(trials, cfg, args.parallel)
        row = {
            "seed": seed,
            "trials": len(trials),
            "random_gpu_s": round(random_s, 1),
            "startup_share": round(sum(c.points[0][2] for c in trials.values()) / random_s, 3),
            "oracle_ratio": round(oracle / random_s, 3),
            "asha_ratio": round(asha_s / random_s, 3),
            "asha_lost": round(trials[best_trial].best - asha_best, 4),
        }
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(
        f"seeds={len(rows)} oracle_ratio_max={max(r['oracle_ratio'] for r in rows):.3f} "
        f"asha_ratio_mean={sum(r['asha_ratio'] for r in rows) / len(rows):.3f} "
        f"asha_lost_max={max(r['asha_lost'] for r in rows):.4f} "
        f"startup_share_mean={sum(r['startup_share'] for r in rows) / len(rows):.3f}"
    )


if __name__ == "__main__":
    main()
