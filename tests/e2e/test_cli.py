"""The user's path: `dlaas up`, the demo's CLI session, `dlaas down`, as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import process_gone

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DLAAS = str(Path(sys.executable).parent / "dlaas")


def dlaas(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DLAAS_HOME": str(home)}
    env.pop("DLAAS_ENDPOINT", None)
    return subprocess.run([DLAAS, *args], env=env, cwd=ROOT, text=True, capture_output=True, check=check, timeout=120)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "home"
    dlaas(tmp_path / "home", "down", check=False)


def test_help_lists_the_verbs() -> None:
    out = subprocess.run([DLAAS, "--help"], text=True, capture_output=True, check=True).stdout
    for verb in ("train", "list", "show", "logs", "cancel", "download", "usage", "data", "up", "down", "status"):
        assert f"  {verb}" in out


def test_demo_runs_the_digits_training_and_bills_it_exactly(home: Path) -> None:
    env = {**os.environ, "DLAAS_HOME": str(home)}
    demo = subprocess.run(
        [sys.executable, str(ROOT / "examples/demo.py")], env=env, text=True, capture_output=True, timeout=300
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "final accuracy=" in demo.stdout
    assert ": equal" in demo.stdout

    listed = json.loads(dlaas(home, "list", "-o", "json").stdout)
    (run,) = listed["runs"]
    assert run["status"]["state"] == "RUN_STATE_COMPLETED"
    run_id = run["name"].rsplit("/", 1)[-1]
    metrics = json.loads((home / "results" / run_id / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.9

    # Structured logs carry the run; every service serves Prometheus metrics.
    scheduler_lines = [json.loads(line) for line in (home / "logs" / "scheduler.log").read_text().splitlines()]
    assert any(line.get("run") == run["name"] and "assigned" in line["message"] for line in scheduler_lines)
    status = json.loads(dlaas(home, "status", "-o", "json").stdout)
    assert {s["service"] for s in status["services"]} == {"api_gateway", "scheduler", "storage", "metering"}
    gateway = next(s for s in status["services"] if s["service"] == "api_gateway")
    with urllib.request.urlopen(gateway["metrics"], timeout=5) as response:  # noqa: S310 - our own http URL
        exposition = response.read().decode()
    assert (
        'dlaas_grpc_server_handled_total{grpc_code="OK",grpc_method="/dlaas.gateway.v1.TrainingService/CreateRun"'
        in (exposition)
    )

    pids = [s["pid"] for s in status["services"]]
    dlaas(home, "down")
    assert all(process_gone(pid) for pid in pids)
    assert dlaas(home, "status", check=False).returncode == 0


def test_validate_prints_every_error_with_its_path(home: Path, tmp_path: Path) -> None:
    dlaas(home, "up")
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\nframework: {name: pytorch}\nresources: {gpus: 100}\n")
    result = dlaas(home, "validate", str(bad), check=False)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "  command:" in result.stderr and "  resources.gpus:" in result.stderr
    good = dlaas(home, "validate", str(ROOT / "examples/digits/ffdl-manifest.yml"))
    normalized = json.loads(good.stdout)
    assert normalized["source_format"] == "ffdl" and normalized["training_data"]["bucket"] == "digits-data"
