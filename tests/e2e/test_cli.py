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


def dlaas(
    home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DLAAS_HOME": str(home)}
    for name in ("DLAAS_ENDPOINT", "DLAAS_API_KEY", "DLAAS_ADMIN_KEY", "DLAAS_CONFIG"):
        environment.pop(name, None)
    environment.update(env or {})
    done = subprocess.run(
        [DLAAS, *args], env=environment, cwd=ROOT, text=True, input=stdin, capture_output=True, timeout=120
    )
    assert not check or done.returncode == 0, f"dlaas {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done


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


def test_accounts_and_keys_from_the_command_line(home: Path, tmp_path: Path) -> None:
    dlaas(home, "up")
    # `dlaas up` keeps the platform's admin key and the account "default"'s key, for its owner only.
    for secret_file in (home / "config.json", home / "secrets.json"):
        assert secret_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(dlaas(home, "whoami", "-o", "json").stdout)["name"] == "accounts/default"

    created = json.loads(dlaas(home, "admin", "accounts", "create", "alice", "--tier", "standard", "-o", "json").stdout)
    assert created["account"] == "alice" and created["key"].startswith(created["prefix"] + "_")
    assert "alice" in dlaas(home, "admin", "accounts", "ls").stdout

    # Alice's machine: her key in DLAAS_API_KEY, no config file of the platform's.
    alice = {"DLAAS_API_KEY": created["key"], "DLAAS_CONFIG": str(tmp_path / "alice.json")}
    assert dlaas(home, "whoami", env=alice).stdout.strip() == "accounts/alice (tier standard)"
    refused = dlaas(home, "admin", "accounts", "ls", env=alice, check=False)
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    assert created["prefix"] in dlaas(home, "keys", "ls", env=alice).stdout

    # Rotation: a new key works, the old one is refused at once; neither is ever printed again.
    rotated = json.loads(dlaas(home, "keys", "rotate", "-o", "json", env=alice).stdout)
    assert rotated["revoked"] == created["prefix"] and rotated["key"].startswith(rotated["prefix"])
    old = dlaas(home, "whoami", env=alice, check=False)
    assert old.returncode == 1 and "UNAUTHENTICATED" in old.stderr and created["key"] not in old.stderr
    listed = dlaas(home, "keys", "ls", "-o", "json", env={**alice, "DLAAS_API_KEY": rotated["key"]}).stdout
    assert rotated["key"] not in listed and {k["prefix"] for k in json.loads(listed)} == {
        created["prefix"],
        rotated["prefix"],
    }

    # `dlaas login` keeps the key in a config file only its owner may read, and refuses a looser one.
    config = {"DLAAS_CONFIG": str(tmp_path / "alice.json")}
    dlaas(home, "login", env=config, stdin=rotated["key"] + "\n")
    assert (tmp_path / "alice.json").stat().st_mode & 0o777 == 0o600
    assert dlaas(home, "whoami", env=config).stdout.startswith("accounts/alice")
    (tmp_path / "alice.json").chmod(0o644)
    loose = dlaas(home, "whoami", env=config, check=False)
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
