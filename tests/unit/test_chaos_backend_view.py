"""make chaos's backend view: what it counts from live process groups and job directories."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import BackendView


@pytest.fixture
def commands() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def attempt(
    home: Path, account: str, run: str, attempt: int, gpus: list[int], commands: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes]:
    """A job directory as the local backend leaves it, its command alive in its own process group."""
    job = home / "jobs" / account / f"{run}-a{attempt}"
    job.mkdir(parents=True)
    command = subprocess.Popen(["sleep", "60"], start_new_session=True)
    commands.append(command)
    name = f"accounts/{account}/runs/{run}"
    (job / "runner.json").write_text(json.dumps({"run": name, "gpu_indices": gpus}))
    (job / "state.json").write_text(json.dumps({"command_pgid": command.pid}))
    return command


def test_a_quiet_platform_passes(tmp_path: Path, commands: list[subprocess.Popen[bytes]]) -> None:
    attempt(tmp_path, "chaos-free", "a", 1, [0], commands)
    attempt(tmp_path, "chaos-standard", "b", 1, [1, 2], commands)
    view = BackendView(tmp_path)
    view.sample()
    assert (view.samples, view.most_gpus) == (1, 3)
    assert (view.quota_violations, view.gpu_conflicts, view.duplicates) == (0, 0, 0)


def test_it_counts_quota_gpu_sharing_and_a_run_live_twice(
    tmp_path: Path, commands: list[subprocess.Popen[bytes]]
) -> None:
    attempt(tmp_path, "chaos-free", "a", 1, [0], commands)
    attempt(tmp_path, "chaos-free", "b", 1, [1], commands)  # a free account holds 2 GPUs: over its tier
    attempt(tmp_path, "chaos-premium", "c", 1, [2], commands)
    attempt(tmp_path, "chaos-premium", "c", 2, [2], commands)  # the same run twice, on the same GPU
    view = BackendView(tmp_path)
    view.sample()
    assert (view.quota_violations, view.gpu_conflicts, view.duplicates) == (1, 1, 1)


def test_ended_commands_hold_nothing(tmp_path: Path, commands: list[subprocess.Popen[bytes]]) -> None:
    first = attempt(tmp_path, "chaos-free", "a", 1, [0], commands)
    attempt(tmp_path, "chaos-free", "b", 1, [0], commands)
    first.kill()
    first.wait()  # reaped: its process group is empty
    view = BackendView(tmp_path)
    view.sample()
    assert (view.most_gpus, view.quota_violations, view.gpu_conflicts) == (1, 0, 0)
