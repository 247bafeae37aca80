"""Runs on the platform's own store: the runner stages and writes results only while the storage
service confirms the run's grant, and no run token outlives its attempt on disk.

Each run's command waits for a file `release` in its job directory, so that the test can look
at (and act on) the live attempt before letting it finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
from pathlib import Path

import pytest

from dlaas.gateway.v1 import gateway_pb2
from dlaas.runner.config import ConfigError, RunnerConfig
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.types.v1 import run_pb2
from tests.support import Platform, manifest, pack, service_channel, submit, transition_ms, wait_for

ASSIGNED = run_pb2.RUN_STATE_ASSIGNED

pytestmark = pytest.mark.e2e

WAIT = "import os, pathlib, time\nwhile not pathlib.Path('../release').exists():\n    time.sleep(0.05)\n"
TRAIN = WAIT + (
    "numbers = pathlib.Path(os.environ['DATA_DIR'], 'numbers.txt').read_text()\n"
    "pathlib.Path(os.environ['RESULT_DIR'], 'total.txt').write_text(str(sum(map(int, numbers.split()))))\n"
    "print('trained')\n"
)


async def put_numbers(platform: Platform) -> None:
    grant = await platform.client.CreateDataGrant(
        gateway_pb2.CreateDataGrantRequest(
            location=run_pb2.ObjectLocation(bucket="numbers"), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
        )
    )
    Path(grant.local.path, "numbers.txt").write_text("1 2 3 4")


async def start_held(
    platform: Platform, script: str, max_runtime: str = ""
) -> tuple[gateway_pb2.Run, Path, RunnerConfig]:
    """A run on the platform store, RUNNING and held; its job directory and its live runner.json."""
    command = manifest("python train.py", gpus=0, data_bucket="numbers", max_runtime=max_runtime)
    run = await submit(platform.client, command, pack({"train.py": script}))
    running = await wait_for(platform.client, run.name, {run_pb2.RUN_STATE_RUNNING})
    assert running.status.state == run_pb2.RUN_STATE_RUNNING, list(running.status.log_tail)
    job = platform.jobs_dir / "default" / f"{run.name.rsplit('/', 1)[-1]}-a1"
    return run, job, RunnerConfig.load(job / "runner.json")


def holding(root: Path, secrets: set[str]) -> list[str]:
    """Every file under `root` that holds one of `secrets`."""
    return sorted(
        str(path)
        for path in root.rglob("*")
        if path.is_file() and any(secret.encode() in path.read_bytes() for secret in secrets)
    )


async def eventually(check: object, timeout: float = 30.0) -> bool:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return bool(check())


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_no_run_token_outlives_a_completed_or_a_cancelled_run(platform: Platform, tmp_path: Path) -> None:
    await put_numbers(platform)
    finishing, finishing_job, finishing_config = await start_held(platform, TRAIN)
    cancelled, cancelled_job, cancelled_config = await start_held(platform, WAIT)
    tokens = {finishing_config.run_token, cancelled_config.run_token}
    # While the attempts are live, their runner.json (mode 0600) is the one file that holds them.
    assert holding(tmp_path, tokens) == sorted(str(job / "runner.json") for job in (finishing_job, cancelled_job))

    (finishing_job / "release").touch()
    await platform.client.CancelRun(gateway_pb2.CancelRunRequest(name=cancelled.name))
    done = await wait_for(platform.client, finishing.name)
    stopped = await wait_for(platform.client, cancelled.name)

    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
    assert stopped.status.state == run_pb2.RUN_STATE_CANCELLED, list(stopped.status.log_tail)
    assert Path(finishing_config.results_path or "", "total.txt").read_text() == "10"
    # Nothing under the platform's directory holds a run token any more: not the job directories,
    # the logs, the local store nor the databases.
    assert holding(tmp_path, tokens) == []
    for run, job in ((finishing, finishing_job), (cancelled, cancelled_job)):
        config = job / "runner.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        left = json.loads(config.read_text())
        # What make chaos and people read from it stays: the run, its GPUs, its grant and paths.
        assert left["secrets_removed"] is True and "run_token" not in left
        assert (left["run"], left["gpu_indices"], left["attempt"]) == (run.name, [], 1)
        assert left["grant"].startswith("accounts/default/grants/")
        with pytest.raises(ConfigError, match="secrets were removed"):
            RunnerConfig.load(config)


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_killed_runner_leaves_its_secrets_to_the_backend_to_remove(platform: Platform, tmp_path: Path) -> None:
    await put_numbers(platform)
    run, job, config = await start_held(platform, WAIT)

    os.kill(int((job / "runner.pid").read_text()), signal.SIGKILL)  # no chance to clean up itself

    # The scheduler sees the runner gone, kills what is left of its command, and the backend
    # removes the secrets from its runner.json.
    assert await eventually(lambda: json.loads((job / "runner.json").read_text()).get("secrets_removed"))
    assert holding(tmp_path, {config.run_token}) == []
    await platform.client.CancelRun(gateway_pb2.CancelRunRequest(name=run.name))
    await wait_for(platform.client, run.name)


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_revoked_grant_stops_the_runner_writing_results(platform: Platform) -> None:
    await put_numbers(platform)
    run, job, config = await start_held(platform, TRAIN)
    assert config.results_path is not None and config.data_path is not None

    # The grant is revoked while the command runs (as when its run ends): the runner asks the
    # storage service before it writes results and is refused.
    async with service_channel(platform.storage.address) as channel:
        storage = storage_pb2_grpc.StorageServiceStub(channel)
        await storage.RevokeGrant(storage_pb2.RevokeGrantRequest(name=config.grant))
    (job / "release").touch()
    done = await wait_for(platform.client, run.name)

    assert done.status.state == run_pb2.RUN_STATE_FAILED
    assert done.status.termination_reason == run_pb2.TERMINATION_REASON_INFRASTRUCTURE
    assert "upload of the results failed" in done.status.message and "was revoked" in done.status.message
    # The command wrote its result in the job directory; nothing reached the run's results prefix.
    assert (job / "results" / "total.txt").read_text() == "10"
    assert [p for p in config.results_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_runs_grant_lasts_its_max_runtime_plus_the_margin(platform: Platform) -> None:
    await put_numbers(platform)
    run, job, config = await start_held(platform, WAIT, max_runtime="5m")
    async with service_channel(platform.storage.address) as channel:
        storage = storage_pb2_grpc.StorageServiceStub(channel)
        grant = await storage.RenewGrant(storage_pb2.RenewGrantRequest(name=config.grant, run_token=config.run_token))
    assigned_ms = transition_ms(await platform.client.GetRun(gateway_pb2.GetRunRequest(name=run.name)), ASSIGNED)
    (job / "release").touch()
    await wait_for(platform.client, run.name)

    lasts_s = (grant.expire_time.ToMilliseconds() - assigned_ms) / 1000
    assert 5 * 60 + 600 - 5 <= lasts_s <= 5 * 60 + 600 + 5, lasts_s  # max_runtime + grant_margin_s (600)
