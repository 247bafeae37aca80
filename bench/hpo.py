"""make bench-hpo: the digits sweep by random search and by ASHA, same trials (same space, seed and
number of runs), on the embedded default with 2 virtual GPU slots.

- asha_gpu_seconds_ratio: GPU-seconds metering billed for ASHA's trials over random search's;
- asha_best, random_best: the best test accuracy (a fraction) each found.

Goal: ASHA within 0.005 of random's best with at most a third of its GPU-seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from dlaas import platform
from dlaas.gateway.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.types.v1 import run_pb2

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
SWEEP = ROOT / "examples" / "digits-sweep" / "manifest.yml"


def run_experiment(stub: Any, training: Any, text: str, code: bytes) -> experiments_pb2.Experiment:
    created = stub.CreateExperiment(
        experiments_pb2.CreateExperimentRequest(manifest=text, code_archive=code, request_id=uuid.uuid4().hex)
    )
    while True:
        found: experiments_pb2.Experiment = stub.GetExperiment(experiments_pb2.GetExperimentRequest(name=created.name))
        if found.state != experiments_pb2.EXPERIMENT_STATE_RUNNING:
            break
        time.sleep(1)
    if found.state != experiments_pb2.EXPERIMENT_STATE_COMPLETED:
        raise RuntimeError(f"{found.name} ended {found.state}: {found.message}")
    return found


def gpu_seconds(training: gateway_pb2_grpc.TrainingServiceStub, experiment: experiments_pb2.Experiment) -> float:
    """What metering billed for the experiment's trials (waits for every interval to close)."""
    total_ms = 0
    for trial in experiment.trials:
        for _ in range(600):
            usage = training.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=trial.run, page_size=100))
            if usage.usage_records and not any(r.accruing for r in usage.usage_records):
                break
            time.sleep(0.1)
        total_ms += usage.total_gpu_milliseconds
    return total_ms / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=None, help="trials per search (default: the manifest's)")
    parser.add_argument("--seed", type=int, default=None, help="seed of both searches (default: the manifest's)")
    args = parser.parse_args()
    document = yaml.safe_load(SWEEP.read_text())
    if args.runs:
        document["experiment"]["max_runs"] = args.runs
    if args.seed is not None:
        document["experiment"]["seed"] = args.seed

    home = Path(tempfile.mkdtemp(prefix="dlaas-bench-hpo-"))
    data = home / "data"
    subprocess.run([sys.executable, str(DIGITS / "prepare_data.py"), str(data)], check=True, stdout=subprocess.DEVNULL)
    os.environ.update({"DLAAS_HOME": str(home), "DLAAS_SCHEDULER_VIRTUAL_GPUS": "2"})
    try:
        platform.up(home)
        admin = cluster_pb2_grpc.AdminServiceStub(platform.channel(home, admin=True))
        admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="standard"))
        channel = platform.channel(home)
        training = gateway_pb2_grpc.TrainingServiceStub(channel)
        experiments = experiments_pb2_grpc.ExperimentServiceStub(channel)
        grant = training.CreateDataGrant(
            gateway_pb2.CreateDataGrantRequest(
                location=run_pb2.ObjectLocation(bucket="digits-data"), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
            )
        )
        (Path(grant.local.path) / "digits.npz").write_bytes((data / "digits.npz").read_bytes())
        code = _pack()
        results: dict[str, tuple[float, float, experiments_pb2.Experiment]] = {}
        for method in ("random", "asha"):
            document["experiment"]["method"] = method
            document["name"] = f"digits-{method}"
            began = time.monotonic()
            found = run_experiment(experiments, training, yaml.safe_dump(document, sort_keys=False), code)
            seconds = gpu_seconds(training, found)
            stopped = sum(t.termination_reason == run_pb2.TERMINATION_REASON_EARLY_STOPPED for t in found.trials)
            print(
                f"{method}: {len(found.trials)} trials, {stopped} stopped early, best {found.best_value:.4f} "
                f"({found.best_run.rsplit('/', 1)[-1]}), {seconds:.1f} GPU-s, {time.monotonic() - began:.0f} s wall",
                flush=True,
            )
            results[method] = (found.best_value, seconds, found)
    finally:
        platform.down(home)
    random_best, random_s, _ = results["random"]
    asha_best, asha_s, _ = results["asha"]
    print(f"home={home} runs={document['experiment']['max_runs']} seed={document['experiment']['seed']}")
    print(f"asha_gpu_seconds_ratio={asha_s / random_s:.3f} asha_best={asha_best:.4f} random_best={random_best:.4f}")


def _pack() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(DIGITS / "train.py", arcname="train.py")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
