"""make gpu-check: the embedded default on a machine with NVIDIA GPUs, checked end to end.

Starts the platform (`dlaas up` in a fresh DLAAS_HOME) with NVML discovery, creates a free
account and a second (standard) account, submits 3 one-GPU runs of examples/gpu-burn from the
free account and 1 from the second, and checks, from what the platform recorded and what NVML
saw (sampled every 0.5 s):

- the free account's runs go one at a time: no two of its RUNNING..upload-finished spans overlap
  (nor its ASSIGNED..end ones, the GPU-holding spans);
- each run sees exactly one GPU: it was placed on one, its CUDA_VISIBLE_DEVICES is that index,
  torch.cuda.device_count() == 1 and the device's UUID is NVML's UUID of that index;
- NVML shows each run's process on its GPU while it runs (nvmlDeviceGetComputeRunningProcesses
  pids matched against the pids of the run's runner process tree), and on no other GPU;
- billed GPU-milliseconds equal GPUs × (upload finished − assigned) of each attempt, from the
  run's transitions (tests/support.assert_billed_exactly, examples/demo.py);
- the share of the billed time the GPU was busy (nvmlDeviceGetUtilizationRates), reported.

With --virtual (or --allow-virtual on a machine where NVML finds no GPU) the same flow runs on
the embedded default's virtual GPU slots; the checks that need NVML are reported as skipped and
the verdict is `gpu_check=skipped-nvml` (never `pass`). Last line: `gpu_check=pass|fail|skipped-nvml`
followed by key=value figures. Runs every step through the `dlaas` CLI, as a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from dlaas import platform
from dlaas.gateway.v1 import gateway_pb2
from dlaas.intervals import attempt_intervals
from dlaas.runner.state import TERMINAL_STATES
from dlaas.types.v1 import run_pb2

ROOT = Path(__file__).resolve().parent.parent
BURN = ROOT / "examples" / "gpu-burn"
# The CLI as `dlaas` runs it, also where the console script is not installed (the device machine).
CLI = "import sys; from dlaas.cli import main; sys.argv[0] = 'dlaas'; main()"
# Where the CLI would otherwise look for another platform or key than the one started here.
FOREIGN = ("DLAAS_API_KEY", "DLAAS_ADMIN_KEY", "DLAAS_ENDPOINT", "DLAAS_CONFIG")
TERMINAL = TERMINAL_STATES
SAMPLE_S = 0.5


class CheckError(Exception):
    """The check cannot go on (the platform did not start, the CLI refused a step)."""


# ---- the dlaas CLI ---------------------------------------------------------------------------


def cli_env(key: str | None) -> dict[str, str]:
    """The CLI's environment: the platform under DLAAS_HOME, with `key` (None: the config file's keys,
    which `dlaas up` wrote: the admin key and the default account's)."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    if key:
        env["DLAAS_API_KEY"] = key
    return env


def dlaas(*args: str, key: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = cli_env(key)
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def dlaas_ok(*args: str, key: str | None = None) -> str:
    result = dlaas(*args, key=key)
    if result.returncode != 0:
        raise CheckError(f"`dlaas {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def start_platform(notes: list[str]) -> None:
    """`dlaas up`; once more after a failed start (one device run is expensive to repeat)."""
    for attempt in (1, 2):
        result = dlaas("up", timeout=120)
        if result.returncode == 0:
            return
        error = result.stderr.strip()
        if attempt == 2:
            raise CheckError(f"`dlaas up` failed twice; the second time:\n{error[-3000:]}")
        lines = [line.strip() for line in error.splitlines() if len(line.strip()) > 3] or [f"exit {result.returncode}"]
        last = next((line for line in lines if line.startswith(("details =", "error:"))), lines[-1])
        notes.append(f"the first `dlaas up` failed ({last[:300]}); stopped and started again")
        dlaas("down")


@dataclass(frozen=True)
class Account:
    name: str  # accounts/{account}
    tier: str
    key: str | None  # its API key; None: the gateway's default account (no API keys yet)


def create_account(name: str, tier: str, notes: list[str]) -> Account | None:
    """`dlaas admin accounts create NAME --tier TIER -o json` → {"account": ..., "key": ...};
    None where this dlaas has no such command yet."""
    result = dlaas("admin", "accounts", "create", name, "--tier", tier, "-o", "json")
    if result.returncode != 0:
        if "No such command" in result.stderr:
            return None
        raise CheckError(f"`dlaas admin accounts create {name}` exited {result.returncode}: {result.stderr.strip()}")
    created = json.loads(result.stdout)
    # The agreed shape, {"account": NAME, "key": SECRET}; CreateAccountResponse's own
    # ({"account": {"name": ...}, "secret": ...}) is read too.
    account, key = created.get("account"), created.get("key") or created.get("secret")
    if isinstance(account, dict):
        account = account.get("name")
    if not account or not isinstance(key, str) or not key:
        raise CheckError(f"`dlaas admin accounts create {name}` printed no account and key: {sorted(created)}")
    account = str(account)
    notes.append(f"created {account} on tier {tier}, with its own API key")
    return Account(account if account.startswith("accounts/") else f"accounts/{account}", tier, key)


def accounts(notes: list[str]) -> tuple[Account, Account]:
    free = create_account("gpu-check-free", "free", notes)
    other = create_account("gpu-check-other", "standard", notes) if free else None
    if free is None or other is None:
        notes.append(
            "`dlaas admin accounts create` is not in this dlaas (no API keys yet): every run is submitted as the "
            "default account (tier free), so the second account is NOT exercised and all runs count as the free "
            "account's"
        )
        default = Account("accounts/default", "free", None)
        return default, default
    return free, other


# ---- NVML and the process tree --------------------------------------------------------------


class Nvml:
    """The NVML calls this check makes (nvidia-ml-py's pynvml)."""

    def __init__(self, nv: Any) -> None:
        self.nv = nv
        self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        self.names = [_text(nv.nvmlDeviceGetName(h)) for h in self.handles]
        self.uuids = [_text(nv.nvmlDeviceGetUUID(h)) for h in self.handles]
        self.driver = _text(nv.nvmlSystemGetDriverVersion())

    @classmethod
    def open(cls) -> tuple[Nvml | None, str]:
        """NVML with at least one GPU, or None and why not."""
        try:
            import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            return None, "nvidia-ml-py (pynvml) is not installed"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVML raises its own error types; any means "no NVML"
            return None, f"NVML did not start: {exc}"
        if pynvml.nvmlDeviceGetCount() == 0:
            pynvml.nvmlShutdown()
            return None, "NVML found no GPU"
        return cls(pynvml), ""

    def sample(self) -> dict[int, tuple[int | None, frozenset[int]]]:
        """GPU index → (utilization %, pids of its compute processes)."""
        gpus: dict[int, tuple[int | None, frozenset[int]]] = {}
        for index, handle in enumerate(self.handles):
            utilization: int | None
            try:
                utilization = int(self.nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception:  # noqa: BLE001 - a sample lost is a sample lost
                utilization = None
            try:
                pids = frozenset(int(p.pid) for p in self.nv.nvmlDeviceGetComputeRunningProcesses(handle))
            except Exception:  # noqa: BLE001
                pids = frozenset()
            gpus[index] = (utilization, pids)
        return gpus

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nv.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parents() -> dict[int, int]:
    """pid → parent pid of every process this machine shows in /proc."""
    found: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and ')'
    return found


def tree(root: int, parent_of: dict[int, int]) -> frozenset[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    pids, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in pids:
                pids.add(child)
                todo.append(child)
    return frozenset(pids)


@dataclass(frozen=True)
class Sample:
    time_ms: int
    gpus: dict[int, tuple[int | None, frozenset[int]]]  # empty without NVML
    trees: dict[str, frozenset[int]]  # run id → pids of its runner's process tree


class Sampler(threading.Thread):
    """Every 0.5 s: NVML's utilization and compute pids per GPU, and each live runner's process tree
    (the local backend writes each attempt's runner pid to JOBS/{account}/{run}-a{attempt}/runner.pid)."""

    def __init__(self, nvml: Nvml | None, jobs_dir: Path) -> None:
        super().__init__(daemon=True)
        self.nvml, self.jobs_dir = nvml, jobs_dir
        self.samples: list[Sample] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_S):
            self.samples.append(self.take())

    def take(self) -> Sample:
        now = int(time.time() * 1000)
        gpus = self.nvml.sample() if self.nvml else {}
        parent_of = parents()
        trees: dict[str, frozenset[int]] = {}
        for pid_file in self.jobs_dir.glob("*/*-a*/runner.pid"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if pid in parent_of:
                run_id = pid_file.parent.name.rsplit("-a", 1)[0]
                trees[run_id] = trees.get(run_id, frozenset()) | tree(pid, parent_of)
        return Sample(now, gpus, trees)

    def stop(self) -> list[Sample]:
        self._halt.set()
        self.join()
        return self.samples


# ---- runs ------------------------------------------------------------------------------------


@dataclass
class Submitted:
    account: Account
    name: str  # accounts/{account}/runs/{run}
    watcher: subprocess.Popen[str] | None = None
    last: gateway_pb2.Run | None = None
    log: str = ""
    records: list[gateway_pb2.UsageRecord] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


def manifest(seconds: float, cpu_seconds: float) -> str:
    return (
        "name: gpu-check\nframework: {name: pytorch}\n"
        f"command: python burn.py --seconds {seconds:g} --cpu-seconds {cpu_seconds:g}\n"
        "resources: {gpus: 1}\nresults: {bucket: gpu-check}\nmax_runtime: 10m\n"
    )


def submit(account: Account, manifest_path: Path) -> Submitted:
    out = dlaas_ok("train", str(manifest_path), "--code", str(BURN), "-o", "json", key=account.key)
    return Submitted(account, json.loads(out)["name"])


def watch(run: Submitted) -> None:
    """Follows `dlaas show RUN --watch -o json` (one JSON line per change) in a thread of its own."""
    env = cli_env(run.account.key)
    run.watcher = subprocess.Popen(
        [sys.executable, "-c", CLI, "show", run.name, "--watch", "-o", "json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    def follow() -> None:
        assert run.watcher is not None and run.watcher.stdout is not None
        for line in run.watcher.stdout:
            with contextlib.suppress(json_format.ParseError, ValueError):
                run.last = json_format.Parse(line, gateway_pb2.Run(), ignore_unknown_fields=True)

    threading.Thread(target=follow, daemon=True).start()


def finished(run: Submitted) -> bool:
    return run.last is not None and run.last.status.state in TERMINAL


def get_run(run: Submitted) -> gateway_pb2.Run:
    out = dlaas_ok("show", run.name, "-o", "json", key=run.account.key)
    return json_format.Parse(out, gateway_pb2.Run(), ignore_unknown_fields=True)


def collect(run: Submitted) -> gateway_pb2.Run:
    """The ended run as the gateway has it, with its log and usage records kept on `run`."""
    final = get_run(run)
    run.log = dlaas_ok("logs", run.name, key=run.account.key)
    run.records = usage_records(run, len(attempt_intervals(final)))
    return final


def burn_info(log: str) -> dict[str, Any]:
    """The `gpu-burn {...}` line the example prints first."""
    for line in log.splitlines():
        if line.startswith("gpu-burn {"):
            return dict(json.loads(line.removeprefix("gpu-burn ")))
    return {}


def usage_records(run: Submitted, attempts: int, timeout: float = 30) -> list[gateway_pb2.UsageRecord]:
    """The run's usage records once metering holds a closed one per attempt (delivery is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        listing = json.loads(dlaas_ok("usage", "--run", run.name, "-o", "json", key=run.account.key))
        records = [
            json_format.ParseDict(r, gateway_pb2.UsageRecord(), ignore_unknown_fields=True)
            for r in listing.get("usage_records", [])
        ]
        if (len(records) >= attempts and not any(r.accruing for r in records)) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


# ---- what the checks read off a run ---------------------------------------------------------


def times(run: gateway_pb2.Run) -> dict[int, int]:
    """state → time (ms) of its last transition."""
    return {t.state: t.time.ToMilliseconds() for t in run.status.transitions}


def end_ms(run: gateway_pb2.Run) -> int | None:
    ends = [t.time.ToMilliseconds() for t in run.status.transitions if t.state in TERMINAL]
    return ends[-1] if ends else None


def billing_mismatch(run: gateway_pb2.Run, records: list[gateway_pb2.UsageRecord]) -> str:
    """'' when each attempt is billed GPUs × (close − ASSIGNED) to the millisecond, once
    (tests/support.assert_billed_exactly); else what differs."""
    gpus = run.spec.resources.gpus
    expected = {a: (start, end, gpus * (end - start)) for a, (start, end) in attempt_intervals(run).items() if end}
    billed = {
        r.attempt: (r.start_time.ToMilliseconds(), r.end_time.ToMilliseconds(), r.gpu_milliseconds) for r in records
    }
    if len(records) != len(billed):
        return f"an attempt has two records: {[json_format.MessageToDict(r) for r in records]}"
    if billed != expected or not expected:
        return f"billed {billed}, transitions say {expected}"
    return ""


def overlaps(spans: list[tuple[str, int, int]]) -> list[str]:
    found = []
    for i, (a, a0, a1) in enumerate(spans):
        for b, b0, b1 in spans[i + 1 :]:
            if a0 < b1 and b0 < a1:
                found.append(f"{a} [{a0}, {a1}] and {b} [{b0}, {b1}] overlap by {min(a1, b1) - max(a0, b0)} ms")
    return found


@dataclass
class Check:
    title: str
    verdict: str = "pass"  # pass | fail | skip
    details: list[str] = field(default_factory=list)

    def fail(self, detail: str) -> None:
        self.verdict = "fail"
        self.details.append(detail)

    def skip(self, detail: str) -> None:
        if self.verdict == "pass":
            self.verdict = "skip"
        self.details.append(detail)


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)


def evaluate(runs: list[Submitted], finals: list[gateway_pb2.Run], samples: list[Sample], nvml: Nvml | None) -> Report:
    report = Report()
    done = Check("every run completed")
    one_at_a_time = Check("the free account's runs go one at a time")
    one_gpu = Check("each run sees exactly one GPU (its placement, CUDA_VISIBLE_DEVICES, device_count, UUID)")
    in_tree = Check("the command's process is in the run's runner process tree")
    on_gpu = Check("NVML shows each run's process on its GPU while it runs, and on no other GPU")
    billed = Check("billed GPU-milliseconds equal GPUs × (upload finished − assigned) of each attempt")
    busy = Check("share of the billed time the GPU was busy (NVML utilization)")
    report.checks = [done, one_at_a_time, one_gpu, in_tree, on_gpu, billed, busy]
    busy_values: list[int] = []
    running_values: list[int] = []
    billed_ms = 0
    by_account: dict[str, list[tuple[Submitted, gateway_pb2.Run]]] = {}
    origin = min(f.create_time.ToMilliseconds() for f in finals)  # the first submission
    for run, final in zip(runs, finals, strict=True):
        by_account.setdefault(run.account.name, []).append((run, final))
        at = times(final)
        state = run_pb2.RunState.Name(final.status.state).removeprefix("RUN_STATE_")
        if final.status.state != run_pb2.RUN_STATE_COMPLETED:
            done.fail(f"{run.run_id} ended {state}: {final.status.message or list(final.status.log_tail)[-3:]}")
        indices = list(final.status.placement.gpu_indices)
        info = burn_info(run.log)
        # -- one GPU
        if len(indices) != 1:
            one_gpu.fail(f"{run.run_id} was placed on GPUs {indices}")
        elif not info:
            one_gpu.fail(f"{run.run_id}: no `gpu-burn {{...}}` line in its log")
        else:
            index = indices[0]
            if info.get("cuda_visible_devices") != str(index):
                one_gpu.fail(f"{run.run_id}: CUDA_VISIBLE_DEVICES={info.get('cuda_visible_devices')!r}, GPU {index}")
            if nvml is not None:
                devices = info.get("devices", [])
                if info.get("device_count") != 1 or len(devices) != 1:
                    one_gpu.fail(f"{run.run_id}: torch saw {info.get('device_count')} devices: {devices}")
                elif index >= len(nvml.uuids) or _uuid(devices[0].get("uuid")) != _uuid(nvml.uuids[index]):
                    one_gpu.fail(f"{run.run_id}: torch's device {devices[0]} is not NVML's GPU {index}")
                else:
                    one_gpu.details.append(f"{run.run_id}: GPU {index} = {devices[0]['uuid']} ({devices[0]['name']})")
        # -- the process tree and NVML
        running_from, running_to = at.get(run_pb2.RUN_STATE_RUNNING), at.get(run_pb2.RUN_STATE_UPLOADING)
        window = [s for s in samples if running_from and running_to and running_from <= s.time_ms <= running_to]
        seen_tree = frozenset().union(*(s.trees.get(run.run_id, frozenset()) for s in window))
        burn_pid = info.get("pid")
        if not window:
            in_tree.fail(f"{run.run_id}: no sample while its command ran (RUNNING {running_from} → {running_to})")
        elif burn_pid not in seen_tree:
            in_tree.fail(f"{run.run_id}: its command's pid {burn_pid} never in its runner's tree {sorted(seen_tree)}")
        hits, elsewhere = 0, 0
        if nvml is None:
            pass
        elif len(indices) == 1:
            for s in window:
                pids = s.trees.get(run.run_id, frozenset())
                hits += bool(s.gpus.get(indices[0], (None, frozenset()))[1] & pids)
                elsewhere += any(i != indices[0] and g[1] & pids for i, g in s.gpus.items())
            if not hits:
                seen = sorted(frozenset().union(*(s.gpus.get(indices[0], (None, frozenset()))[1] for s in window)))
                on_gpu.fail(
                    f"{run.run_id}: none of its processes {sorted(seen_tree)} among GPU {indices[0]}'s "
                    f"compute processes {seen} in {len(window)} samples"
                )
            if elsewhere:
                on_gpu.fail(f"{run.run_id}: its processes were on another GPU in {elsewhere} samples")
        # -- billing
        mismatch = billing_mismatch(final, run.records)
        if mismatch:
            billed.fail(f"{run.run_id}: {mismatch}")
        run_billed = sum(r.gpu_milliseconds for r in run.records)
        billed_ms += run_billed
        # -- busy share over the billed span (and over the command's span, for comparison)
        run_busy = run_running = None
        assigned, ended = at.get(run_pb2.RUN_STATE_ASSIGNED), end_ms(final)
        if nvml is not None and len(indices) == 1 and assigned and ended:
            util = [u for s in samples if assigned <= s.time_ms <= ended and (u := s.gpus[indices[0]][0]) is not None]
            util_running = [u for s in window if (u := s.gpus[indices[0]][0]) is not None]
            busy_values += util
            running_values += util_running
            run_busy = statistics.fmean(util) / 100 if util else None
            run_running = statistics.fmean(util_running) / 100 if util_running else None
        report.rows.append(
            [
                run.run_id,
                run.account.name.removeprefix("accounts/"),
                state,
                ",".join(map(str, indices)) or "-",
                str(info.get("cuda_visible_devices", "-")),
                _span(origin, assigned),
                _span(origin, ended),
                _span(assigned, ended),
                _span(running_from, running_to),
                f"{run_billed / 1000:.3f}",
                f"{hits}/{len(window)}" if nvml else "-",
                _share(run_busy),
                _share(run_running),
                str(info.get("pid", "-")),
            ]
        )
    # -- one at a time, per free account
    for name, account_runs in by_account.items():
        if account_runs[0][0].account.tier != "free":
            continue
        command_spans, held_spans = [], []
        for run, final in account_runs:
            at, ended = times(final), end_ms(final)
            if run_pb2.RUN_STATE_RUNNING in at and ended:
                command_spans.append((run.run_id, at[run_pb2.RUN_STATE_RUNNING], ended))
            if run_pb2.RUN_STATE_ASSIGNED in at and ended:
                held_spans.append((run.run_id, at[run_pb2.RUN_STATE_ASSIGNED], ended))
        for problem in overlaps(command_spans):
            one_at_a_time.fail(f"{name}: RUNNING..upload-finished spans {problem}")
        for problem in overlaps(held_spans):
            one_at_a_time.fail(f"{name}: ASSIGNED..end (GPU held) spans {problem}")
        if one_at_a_time.verdict == "pass":
            one_at_a_time.details.append(f"{name}: {len(command_spans)} runs, no overlap")
    others = [(r, f) for r, f in zip(runs, finals, strict=True) if r.account.tier != "free"]
    frees = [(r, f) for r, f in zip(runs, finals, strict=True) if r.account.tier == "free"]
    for run, final in others:
        spans = [(r.run_id, times(f).get(run_pb2.RUN_STATE_ASSIGNED, 0), end_ms(f) or 0) for r, f in frees]
        mine = (run.run_id, times(final).get(run_pb2.RUN_STATE_ASSIGNED, 0), end_ms(final) or 0)
        together = overlaps([mine, *spans])
        one_at_a_time.details.append(
            f"{run.account.name} ({run.account.tier}) ran beside the free account's runs: "
            + ("yes" if together else "no (GPUs were all taken, or it came first)")
        )
    one_at_a_time.details = [d for d in one_at_a_time.details if d]
    if nvml is None:
        one_gpu.skip("virtual GPUs: placement and CUDA_VISIBLE_DEVICES checked; device_count and UUID not (no CUDA)")
        on_gpu.skip("no NVML: skipped")
        busy.skip("no NVML: not measured")
    else:
        on_gpu.details.append("matched in every run" if on_gpu.verdict == "pass" else "")
        share = statistics.fmean(busy_values) / 100 if busy_values else None
        share_running = statistics.fmean(running_values) / 100 if running_values else None
        busy.details.append(
            f"{_share(share)} of the billed time ({len(busy_values)} samples); "
            f"{_share(share_running)} while the commands ran"
        )
        report.figures["busy_share"] = f"{share:.3f}" if share is not None else "nan"
        report.figures["busy_share_running"] = f"{share_running:.3f}" if share_running is not None else "nan"
    report.figures["billed_gpu_s"] = f"{billed_ms / 1000:.3f}"
    for check in report.checks:
        check.details = [d for d in check.details if d]
    return report


def _uuid(value: object) -> str:
    """NVML writes GPU-<uuid>; torch's str() of a device UUID may lack the prefix."""
    return str(value).strip().lower().removeprefix("gpu-")


def _span(start: int | None, end: int | None) -> str:
    return f"{(end - start) / 1000:.2f}" if start and end else "-"


def _share(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"


def render(report: Report, header: list[str], notes: list[str]) -> None:
    print("\n".join(header))
    print("runs (times in s; *_AT from the first submission; CVD: the CUDA_VISIBLE_DEVICES the command saw):")
    columns = ["RUN", "ACCOUNT", "STATE", "GPU", "CVD", "ASSIGNED_AT", "ENDED_AT", "BILLED_SPAN_S", "RUNNING_S"]
    columns += ["BILLED_GPU_S", "NVML_HITS"]
    columns += ["BUSY_BILLED", "BUSY_RUNNING", "PID"]
    table = [columns, *report.rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    for row in table:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print("checks:")
    for check in report.checks:
        print(f"  [{check.verdict}] {check.title}")
        for detail in check.details:
            print(f"         {detail}")
    if notes:
        print("notes:")
        for note in notes:
            print(f"  - {note}")


# ---- the check -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--virtual", action="store_true", help="use virtual GPU slots; skip the NVML checks")
    parser.add_argument("--allow-virtual", action="store_true", help="run as --virtual where NVML finds no GPU")
    parser.add_argument("--free-runs", type=int, default=3)
    parser.add_argument("--other-runs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20, help="how long each run keeps its GPU busy")
    parser.add_argument("--cpu-seconds", type=float, default=3, help="how long each run loops on a virtual GPU")
    parser.add_argument("--virtual-gpus", type=int, default=2, help="virtual GPU slots (with --virtual)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for every run to end")
    args = parser.parse_args()
    began = time.monotonic()
    notes: list[str] = []
    nvml, why = (None, "--virtual") if args.virtual else Nvml.open()
    if nvml is None and not (args.virtual or args.allow_virtual):
        print(f"no GPU to check: {why}; run with --virtual (or --allow-virtual) to check the flow on virtual GPUs")
        print("gpu_check=fail reason=no-gpu")
        sys.exit(1)
    if nvml is None:
        notes.append(f"virtual GPUs ({why}): the NVML checks (processes on GPUs, busy share, UUIDs) are skipped")
    home = Path(tempfile.mkdtemp(prefix="dlaas-gpu-check-"))
    # The services, the CLI and the runners all import dlaas from this tree, wherever they start.
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)
    os.environ["DLAAS_HOME"] = str(home)
    os.environ["DLAAS_SCHEDULER_GPU_DISCOVERY"] = "nvml" if nvml else "virtual"
    os.environ["DLAAS_SCHEDULER_VIRTUAL_GPUS"] = str(args.virtual_gpus)
    for name in FOREIGN:
        os.environ.pop(name, None)
    header = [
        f"GPU check: {len(nvml.names)} × {nvml.names[0]} (driver {nvml.driver})" if nvml else "GPU check: virtual GPUs",
        f"data under {home}; python {sys.version.split()[0]} at {sys.executable}",
    ]
    runs: list[Submitted] = []
    gpu_types: set[str] = set()
    sampler = Sampler(nvml, home / "jobs")
    try:
        started = time.monotonic()
        start_platform(notes)
        notes.append(f"platform up in {time.monotonic() - started:.1f} s")
        for node in json.loads(dlaas_ok("nodes", "-o", "json")).get("nodes", []):
            header.append(f"node {node.get('name')}: {node.get('gpu_count')} × {node.get('gpu_type')}")
            gpu_types.add(str(node.get("gpu_type")))
        free, other = accounts(notes)
        manifest_path = home / "gpu-burn.yml"
        manifest_path.write_text(manifest(args.seconds, args.cpu_seconds))
        sampler.start()
        started = time.monotonic()
        for account, count in ((free, args.free_runs), (other, args.other_runs)):
            for _ in range(count):
                runs.append(submit(account, manifest_path))
                watch(runs[-1])
        notes.append(f"{len(runs)} runs submitted in {time.monotonic() - started:.1f} s")
        deadline = time.monotonic() + args.timeout
        while not all(finished(r) for r in runs) and time.monotonic() < deadline:
            time.sleep(0.5)
        notes.append(f"all runs ended {time.monotonic() - started:.1f} s after the first submission")
        late = [r for r in runs if not finished(r)]
        for run in late:
            notes.append(f"{run.run_id} had not ended after {args.timeout:.0f} s: cancelled")
            dlaas("cancel", run.name, key=run.account.key)
        samples = sampler.stop()
        started = time.monotonic()
        with ThreadPoolExecutor(len(runs)) as pool:
            finals = list(pool.map(collect, runs))
        notes.append(f"states, logs and usage read in {time.monotonic() - started:.1f} s")
    except (CheckError, subprocess.TimeoutExpired) as exc:
        print("\n".join(header))
        print(f"the check could not go on: {exc}")
        print(f"gpu_check=fail reason=setup elapsed_s={time.monotonic() - began:.1f}")
        sys.exit(1)
    finally:
        if sampler.is_alive():
            sampler.stop()
        for run in runs:
            if run.watcher is not None and run.watcher.poll() is None:
                run.watcher.terminate()
        if dlaas("down").returncode != 0:
            platform.down(home)
        if nvml:
            nvml.close()
    report = evaluate(runs, finals, samples, nvml)
    if late:
        report.checks[0].fail(f"{len(late)} runs did not end within {args.timeout:.0f} s")
    render(report, header, notes)
    failed = any(c.verdict == "fail" for c in report.checks)
    verdict = "fail" if failed else ("skipped-nvml" if nvml is None else "pass")
    figures = {
        "runs": str(len(runs)),
        "gpus": str(len(nvml.names)) if nvml else str(args.virtual_gpus),
        "gpu_type": ",".join(sorted(gpu_types)) or "unknown",
        **report.figures,
        "samples": str(len(samples)),
        "elapsed_s": f"{time.monotonic() - began:.1f}",
    }
    print(f"gpu_check={verdict} " + " ".join(f"{k}={v}" for k, v in figures.items()))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
