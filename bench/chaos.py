"""make chaos: kill anything, lose nothing — checked on the embedded default.

`dlaas up` in a temporary DLAAS_HOME (4 virtual GPUs), 3 accounts (free, standard, premium).
The standard account runs an experiment of `--trials` short trials (random search, 4 at a time);
every account submits `--singles` single runs, each writing a result file. Meanwhile, for
`--cycles` cycles, the harness picks one of: kill -9 a random service, kill -9 the runner of a
random running run, kill -9 all four services — and restarts what it killed (on its ports) after
a random delay. Then it waits for every run to end and checks, from the scheduler's records, the
metering ledger and the object store:

- lost: runs that did not end in exactly one terminal state (or never ended);
- duplicated: runs whose attempts overlapped in time (ran twice at once);
- quota_violations: instants when an account held more GPUs than its tier allows;
- ledger_diff_ms: the sum over attempts of |billed GPU-ms − GPUs × (close − ASSIGNED)|, plus a
  whole interval for each attempt billed twice or not at all;
- missing_results: completed runs (single runs and the experiment's trials) whose result file
  is not in the object store with the content the run wrote.

Those come from the records, which hold every instant, so checking them at the end covers the
whole run. The backend's own view is checked throughout: a thread samples the process table every
0.1 s while the chaos runs and until every run has ended, and counts the samples in which

- backend_quota_violations: an account's live commands held more GPUs than its tier allows;
- gpu_conflicts: one GPU was held by the live commands of two attempts;
- backend_duplicates: one run had live commands in two attempts.

A command is live while a process of its process group (state.json's `command_pgid`) is alive
and not a zombie; its GPUs and run come from the attempt's runner.json. The user's command is
what holds a GPU, so a runner that has stopped its command and is still uploading holds none.

Reproducible from `--seed` (printed first, and again on failure). Last line:
`seed=… cycles=… runs=… lost=0 duplicated=0 quota_violations=0 ledger_diff_ms=0 missing_results=0
backend_samples=… backend_most_gpus=… backend_quota_violations=0 gpu_conflicts=0 backend_duplicates=0`
(backend_most_gpus: the most GPUs live commands held in one sample, evidence the sampler saw them).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc

from dlaas import platform
from dlaas.config import config_path, read_config
from dlaas.credentials import bearer, with_headers
from dlaas.gateway.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.intervals import attempt_intervals
from dlaas.procs import alive, live_process_groups
from dlaas.runner.state import TERMINAL_STATES
from dlaas.types.v1 import run_pb2

TERMINAL = TERMINAL_STATES
FAILURES = (
    "lost",
    "duplicated",
    "quota_violations",
    "ledger_diff_ms",
    "missing_results",
    "backend_quota_violations",
    "gpu_conflicts",
    "backend_duplicates",
)
TIER_GPUS = {"free": 1, "standard": 8, "premium": 64}  # the default tiers (services/scheduler/settings.py)


def single(seconds: float, name: str) -> str:
    command = (
        f'python -c "import os, time; time.sleep({seconds:.2f}); '
        f"open(os.path.join(os.environ['RESULT_DIR'], 'out.txt'), 'w').write('{name}')\""
    )
    return (
        f"name: {name}\nframework: {{name: python}}\ncommand: {json.dumps(command)}\n"
        "resources: {gpus: 1}\nresults: {bucket: chaos}\n"
    )


def experiment(trials: int) -> str:
    command = (
        "python -c \"import os, time; time.sleep(${t}); print('score=${x}'); "
        "open(os.path.join(os.environ['RESULT_DIR'], 'out.txt'), 'w').write('${x}')\""
    )
    return (
        f"name: chaos-sweep\nframework: {{name: python}}\ncommand: {json.dumps(command)}\n"
        "resources: {gpus: 1}\nresults: {bucket: chaos}\nexperiment:\n"
        "  method: random\n  objective: {metric: score, goal: maximize}\n"
        f"  max_runs: {trials}\n  max_parallel_runs: 4\n  max_failed_runs: {trials}\n  seed: 3\n"
        "  parameters:\n    x: {type: double, min: 0, max: 1}\n    t: {type: double, min: 0.2, max: 1.5}\n"
    )


class Platform:
    def __init__(self, home: Path):
        self.home = home
        self.keys = read_config(config_path(home))

    def channel(self, key: str) -> grpc.Channel:
        address = platform.read_state(self.home)["api_gateway"].address
        return with_headers(grpc.insecure_channel(address), bearer(key))

    def call(self, key: str, make: Any, method: str, request: Any, attempts: int = 120) -> Any:
        """One RPC, tried again while the platform is down or restarting (the harness's own doing)."""
        for _ in range(attempts):
            try:
                with self.channel(key) as ch:
                    return getattr(make(ch), method)(request, timeout=30)
            except grpc.RpcError as error:
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNKNOWN,
                ):
                    raise
            except (KeyError, OSError):
                pass  # the state file is being rewritten
            time.sleep(0.5)
        raise RuntimeError(f"{method} failed for a minute")


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def running_runners(home: Path) -> list[int]:
    pids = []
    for pid_file in (home / "jobs").glob("*/*/runner.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if alive(pid):
                pids.append(pid)
    return pids


def chaos(home: Path, rng: random.Random, cycles: int, log: list[str]) -> None:
    for cycle in range(cycles):
        time.sleep(rng.uniform(0.3, 2.0))
        action = rng.choices(["service", "runner", "all"], weights=[5, 4, 1])[0]
        delay = rng.uniform(0.0, 2.0)
        state = platform.read_state(home)
        if action == "runner":
            runners = running_runners(home)
            if runners:
                victim = rng.choice(runners)
                kill9(victim)
                log.append(f"cycle {cycle}: kill -9 runner {victim}")
            continue
        names = list(state) if action == "all" else [rng.choice(sorted(state))]
        for name in names:
            kill9(state[name].pid)
        log.append(f"cycle {cycle}: kill -9 {', '.join(names)}; back after {delay:.2f} s")
        time.sleep(delay)
        for name in platform.SERVICES:
            if name in names:
                platform.restart(home, name)


class BackendView:
    """Samples which attempts' commands are alive, from the process table and the job directories."""

    def __init__(self, home: Path):
        self.jobs = home / "jobs"
        self.samples = self.quota_violations = self.gpu_conflicts = self.duplicates = self.most_gpus = 0
        self.findings: list[str] = []
        self._attempts: dict[Path, tuple[str, str, tuple[int, ...]]] = {}  # job dir → (account, run, GPUs)
        self._pgids: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="backend-view", daemon=True)

    def __enter__(self) -> BackendView:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        live = live_process_groups()
        held: dict[str, int] = defaultdict(int)
        gpus: dict[int, str] = {}
        runs: dict[str, str] = {}
        for job in self.jobs.glob("*/*"):
            pgid = self._pgid(job)
            if pgid is None or pgid not in live:
                continue
            attempt = self._attempt(job)
            if attempt is None:
                continue
            account, run, indices = attempt
            held[account] += len(indices)
            for gpu in indices:
                if gpu in gpus:
                    self.gpu_conflicts += 1
                    self.findings.append(f"GPU {gpu} held by {gpus[gpu]} and {job.name}")
                gpus[gpu] = job.name
            if run in runs:
                self.duplicates += 1
                self.findings.append(f"{run} live in {runs[run]} and {job.name}")
            runs[run] = job.name
        self.most_gpus = max(self.most_gpus, len(gpus))
        for account, count in held.items():
            if count > TIER_GPUS.get(account.removeprefix("chaos-"), 0):
                self.quota_violations += 1
                self.findings.append(f"{account} held {count} GPUs")
        self.samples += 1

    def _pgid(self, job: Path) -> int | None:
        if job not in self._pgids:
            with contextlib.suppress(OSError, ValueError):
                pgid = json.loads((job / "state.json").read_text()).get("command_pgid")
                if pgid:
                    self._pgids[job] = int(pgid)
        return self._pgids.get(job)

    def _attempt(self, job: Path) -> tuple[str, str, tuple[int, ...]] | None:
        if job not in self._attempts:
            with contextlib.suppress(OSError, ValueError):
                config = json.loads((job / "runner.json").read_text())
                self._attempts[job] = (job.parent.name, config["run"], tuple(config["gpu_indices"]))
        return self._attempts.get(job)


def quota_violations(runs: list[tuple[str, str, gateway_pb2.Run]]) -> int:
    """Instants when an account held more GPUs than its tier allows (sweep over attempt intervals)."""
    events: dict[str, list[tuple[int, int]]] = defaultdict(list)
    tiers: dict[str, str] = {}
    for account, tier, run in runs:
        tiers[account] = tier
        for start, end in attempt_intervals(run).values():
            events[account] += [(start, run.spec.resources.gpus), (end or 1 << 62, -run.spec.resources.gpus)]
    violations = 0
    for account, points in events.items():
        held = 0
        for _, delta in sorted(points, key=lambda p: (p[0], p[1])):  # ends before starts at one instant
            held += delta
            violations += held > TIER_GPUS[tiers[account]]
    return violations


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--singles", type=int, default=10, help="single runs per account")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for every run to end after the chaos")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"seed={seed}", flush=True)
    rng = random.Random(seed)
    home = Path(tempfile.mkdtemp(prefix="dlaas-chaos-"))
    os.environ.update(
        {"DLAAS_HOME": str(home), "DLAAS_SCHEDULER_VIRTUAL_GPUS": "4", "DLAAS_GATEWAY_LOG_LEVEL": "WARNING"}
    )
    platform.up(home)
    log: list[str] = []
    try:
        figures = run(home, rng, args, log)
    except BaseException:
        print("\n".join(log[-20:]), file=sys.stderr)
        print(f"chaos failed; reproduce with --seed {seed}", file=sys.stderr, flush=True)
        raise
    finally:
        platform.down(home)
    print("\n".join(log))
    print(f"home={home}")
    failures = {k: v for k, v in figures.items() if k in FAILURES and v}
    if failures:
        print(f"chaos found {failures}; reproduce with --seed {seed}", file=sys.stderr, flush=True)
    print(" ".join(f"{k}={v}" for k, v in {"seed": seed, "cycles": args.cycles, **figures}.items()))
    if failures:
        sys.exit(1)


def run(home: Path, rng: random.Random, args: argparse.Namespace, log: list[str]) -> dict[str, int]:
    p = Platform(home)
    admin = str(p.keys["admin_key"])
    accounts: dict[str, tuple[str, str]] = {}  # account → (tier, key)
    for tier in ("free", "standard", "premium"):
        name = f"chaos-{tier}"
        created = p.call(
            admin,
            accounts_pb2_grpc.AccountServiceStub,
            "CreateAccount",
            accounts_pb2.CreateAccountRequest(account_id=name, tier=tier, request_id=uuid.uuid4().hex),
        )
        accounts[name] = (tier, created.secret)
    standard_key = accounts["chaos-standard"][1]
    with BackendView(home) as backend:  # from before the first submission
        exp = p.call(
            standard_key,
            experiments_pb2_grpc.ExperimentServiceStub,
            "CreateExperiment",
            experiments_pb2.CreateExperimentRequest(manifest=experiment(args.trials), request_id=uuid.uuid4().hex),
        )
        singles: list[tuple[str, str]] = []  # (account, run name)
        for account, (_, key) in accounts.items():
            for i in range(args.singles):
                name = f"single-{i}"
                manifest = single(rng.uniform(0.2, 2.0), name)
                created = p.call(
                    key,
                    gateway_pb2_grpc.TrainingServiceStub,
                    "CreateRun",
                    gateway_pb2.CreateRunRequest(manifest=manifest, request_id=uuid.uuid4().hex),
                )
                singles.append((account, created.name))

        chaos(home, rng, args.cycles, log)
        exp, runs, found = wait_for_the_end(p, accounts, standard_key, exp, args.timeout)
    log += backend.findings[:20]
    log.append(
        f"experiment {exp.name}: {experiments_pb2.ExperimentState.Name(found.state)}, {len(found.trials)} trials"
    )

    lost = duplicated = ledger_diff = missing = 0
    for account, _, r in runs:
        terminal = [t for t in r.status.transitions if t.state in TERMINAL]
        if len(terminal) != 1 or r.status.transitions[-1].state not in TERMINAL:
            lost += 1
            log.append(f"lost: {r.name} transitions {[t.state for t in r.status.transitions]}")
        spans = sorted((s, e or 1 << 62) for s, e in attempt_intervals(r).values())
        if any(b0 < a1 for (_, a1), (b0, _) in itertools.pairwise(spans)):
            duplicated += 1
            log.append(f"duplicated: {r.name} attempts {spans}")
        ledger_diff += ledger(p, accounts[account][1], r, log)
    by_name = {run.name: (account, run) for account, _, run in runs}
    written = {name: by_name[name][1].spec.display_name for _, name in singles}  # run → what it wrote
    written |= {t.run: t.parameters["x"] for t in found.trials}
    for name, content in written.items():
        account, r = by_name[name]
        if r.status.state == run_pb2.RUN_STATE_COMPLETED and not result_there(p, accounts[account][1], r, content):
            missing += 1
            log.append(f"missing results: {name}")
    return {
        "runs": len(runs),
        "completed": sum(r.status.state == run_pb2.RUN_STATE_COMPLETED for _, _, r in runs),
        "checked_results": sum(by_name[n][1].status.state == run_pb2.RUN_STATE_COMPLETED for n in written),
        "lost": lost,
        "duplicated": duplicated,
        "quota_violations": quota_violations(runs),
        "ledger_diff_ms": ledger_diff,
        "missing_results": missing,
        "backend_samples": backend.samples,
        "backend_most_gpus": backend.most_gpus,
        "backend_quota_violations": backend.quota_violations,
        "gpu_conflicts": backend.gpu_conflicts,
        "backend_duplicates": backend.duplicates,
    }


def wait_for_the_end(
    p: Platform, accounts: dict[str, tuple[str, str]], key: str, exp: Any, timeout: float
) -> tuple[Any, list[tuple[str, str, gateway_pb2.Run]], Any]:
    """Every run of every account must end; the experiment too."""
    deadline = time.monotonic() + timeout
    while True:
        found = p.call(
            key,
            experiments_pb2_grpc.ExperimentServiceStub,
            "GetExperiment",
            experiments_pb2.GetExperimentRequest(name=exp.name),
        )
        runs = all_runs(p, accounts)
        pending = [r.name for _, _, r in runs if r.status.state not in TERMINAL]
        if found.state != experiments_pb2.EXPERIMENT_STATE_RUNNING and not pending:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ended after the chaos: {pending[:5]} … ({len(pending)}), experiment {found.state}")
        time.sleep(2)
    return exp, runs, found


def all_runs(p: Platform, accounts: dict[str, tuple[str, str]]) -> list[tuple[str, str, gateway_pb2.Run]]:
    runs = []
    for account, (tier, key) in accounts.items():
        token = ""
        while True:
            page = p.call(
                key,
                gateway_pb2_grpc.TrainingServiceStub,
                "ListRuns",
                gateway_pb2.ListRunsRequest(page_size=1000, page_token=token),
            )
            runs += [(account, tier, r) for r in page.runs]
            token = page.next_page_token
            if not token:
                break
    return runs


def ledger(p: Platform, key: str, run: gateway_pb2.Run, log: list[str]) -> int:
    """|billed − expected| in GPU-ms over the run's closed attempts; a whole interval when an
    attempt is billed twice or not at all."""
    gpus = run.spec.resources.gpus
    expected = {a: gpus * (e - s) for a, (s, e) in attempt_intervals(run).items() if e is not None}
    for _ in range(60):  # the outbox delivers within moments; records of the last attempts may lag
        records = p.call(
            key,
            gateway_pb2_grpc.TrainingServiceStub,
            "ListUsageRecords",
            gateway_pb2.ListUsageRecordsRequest(run=run.name),
        ).usage_records
        if len(records) >= len(expected) and not any(r.accruing for r in records):
            break
        time.sleep(0.5)
    billed: dict[int, list[int]] = defaultdict(list)
    for record in records:
        billed[record.attempt].append(record.gpu_milliseconds)
    diff = 0
    for attempt in set(expected) | set(billed):
        got, want = billed.get(attempt, []), expected.get(attempt, 0)
        diff += abs(sum(got) - want) + (want if len(got) > 1 else 0)
    if diff:
        log.append(f"ledger: {run.name} billed {dict(billed)}, intervals say {expected}")
    return diff


def result_there(p: Platform, key: str, run: gateway_pb2.Run, content: str) -> bool:
    grant = p.call(
        key,
        gateway_pb2_grpc.TrainingServiceStub,
        "CreateRunResultsGrant",
        gateway_pb2.CreateRunResultsGrantRequest(name=run.name),
    )
    out = Path(grant.local.path) / "out.txt"
    return out.is_file() and out.read_text() == content


if __name__ == "__main__":
    main()
