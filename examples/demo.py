"""`make demo`: the main job on the embedded default, step by step, with the real CLI.

Starts the platform (if it is not up), uploads the digits data set, submits the PyTorch
training, follows its log, shows its states, downloads its results and checks that the billed
GPU-seconds equal GPUs × (upload finished − assigned) as the scheduler recorded them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DLAAS = str(Path(sys.executable).parent / "dlaas")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def dlaas(*args: str, capture: bool = False) -> str:
    print(f"$ dlaas {shlex.join(args)}", flush=True)
    result = subprocess.run([DLAAS, *args], cwd=ROOT, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        sys.exit(f"demo failed: `dlaas {shlex.join(args)}` exited {result.returncode}")
    return result.stdout or ""


def ms(timestamp: str) -> int:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromJsonString(timestamp)
    return ts.ToMilliseconds()


def main() -> None:
    os.environ.setdefault("DLAAS_HOME", str(ROOT / ".dlaas"))
    step(f"Start the platform (data under {os.environ['DLAAS_HOME']})")
    dlaas("up")
    dlaas("status")

    step("Upload the training data (scikit-learn's digits) to the object store")
    with tempfile.TemporaryDirectory() as data:
        subprocess.run([sys.executable, str(ROOT / "examples/digits/prepare_data.py"), data], check=True)
        dlaas("data", "upload", data, "digits-data")
    dlaas("data", "ls", "digits-data")

    step("Submit the training run")
    submitted = json.loads(
        dlaas("train", "examples/digits/manifest.yml", "--code", "examples/digits", "-o", "json", capture=True)
    )
    run = submitted["name"].rsplit("/", 1)[-1]
    print(f"{run} {submitted['status']['state'].removeprefix('RUN_STATE_')}")

    step("Follow its log until it ends")
    dlaas("logs", run, "-f")

    step("Its states, each with its time")
    dlaas("show", run)
    shown = json.loads(dlaas("show", run, "-o", "json", capture=True))
    state = shown["status"]["state"]
    if state != "RUN_STATE_COMPLETED":
        sys.exit(f"demo failed: the run ended {state}")

    step("Download its results")
    target = Path(os.environ["DLAAS_HOME"]) / "results" / run
    dlaas("download", run, "--to", str(target))
    metrics = json.loads((target / "metrics.json").read_text())
    print(f"files: {', '.join(sorted(p.name for p in target.iterdir()))}")
    print(f"test accuracy: {metrics['accuracy']:.4f}")

    step("GPU-seconds billed")
    for _ in range(100):
        usage = json.loads(dlaas("usage", "--run", run, "-o", "json", capture=True))
        records = usage.get("usage_records", [])
        if records and not any(r.get("accruing") for r in records):
            break
        time.sleep(0.1)
    dlaas("usage", "--run", run)
    transitions = {t["state"]: ms(t["time"]) for t in shown["status"]["transitions"]}
    gpus = int(shown["spec"]["resources"].get("gpus", 0))
    expected = gpus * (transitions["RUN_STATE_COMPLETED"] - transitions["RUN_STATE_ASSIGNED"])
    billed = int(usage.get("total_gpu_milliseconds", 0))
    verdict = "equal" if billed == expected else "DIFFERENT"
    print(
        f"billed {billed / 1000:.3f} GPU-s; the scheduler's records give {gpus} GPU × "
        f"(upload finished − assigned) = {expected / 1000:.3f} GPU-s: {verdict}"
    )
    if billed != expected or billed <= 0:
        sys.exit("demo failed: billing does not match the scheduler's records")
    print(f"\nThe platform is still up: try `dlaas list`, `dlaas show {run}`; stop it with `make down`.")


if __name__ == "__main__":
    main()
