"""The life of a run through the four real services, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dlaas.gateway.v1 import gateway_pb2
from dlaas.types.v1 import run_pb2
from tests.support import Platform, manifest, pack, process_gone, read_logs, submit, transition_ms, wait_for

pytestmark = pytest.mark.e2e


async def usage_ms(platform: Platform, run: str) -> gateway_pb2.ListUsageRecordsResponse:
    """The run's usage once metering has applied the close event (delivery is asynchronous)."""
    for _ in range(200):
        usage = await platform.client.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=run))
        if usage.usage_records and not any(r.accruing for r in usage.usage_records):
            return usage
        await asyncio.sleep(0.05)
    raise AssertionError(f"usage of {run} never closed: {usage}")


async def test_submit_runs_to_completion_and_bills_assignment_to_upload(platform: Platform) -> None:
    code = pack(
        {
            "train.py": "import os, pathlib\n"
            "data = pathlib.Path(os.environ['DATA_DIR'], 'numbers.txt').read_text()\n"
            "total = sum(int(x) for x in data.split())\n"
            "print(f'total={total} gpus={os.environ[\"CUDA_VISIBLE_DEVICES\"]}')\n"
            "print('threads=' + os.environ['OMP_NUM_THREADS'] + ',' + os.environ['MKL_NUM_THREADS'])\n"
            "pathlib.Path(os.environ['RESULT_DIR'], 'total.txt').write_text(str(total))\n"
        }
    )
    grant = await platform.client.CreateDataGrant(
        gateway_pb2.CreateDataGrantRequest(
            location=run_pb2.ObjectLocation(bucket="numbers"), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
        )
    )
    Path(grant.local.path, "numbers.txt").write_text("1 2 3 4")

    run = await submit(platform.client, manifest("python train.py", data_bucket="numbers"), code)
    assert run.status.state == run_pb2.RUN_STATE_QUEUED
    done = await wait_for(platform.client, run.name)

    assert run_pb2.RunState.Name(done.status.state) == "RUN_STATE_COMPLETED", done.status
    assert done.status.exit_code == 0
    states = [t.state for t in done.status.transitions]
    assert states == [
        run_pb2.RUN_STATE_QUEUED,
        run_pb2.RUN_STATE_ASSIGNED,
        run_pb2.RUN_STATE_DOWNLOADING,
        run_pb2.RUN_STATE_RUNNING,
        run_pb2.RUN_STATE_UPLOADING,
        run_pb2.RUN_STATE_COMPLETED,
    ]
    times = [t.time.ToMilliseconds() for t in done.status.transitions]
    assert times == sorted(times)
    assert len(done.status.placement.gpu_indices) == 1

    logs = await read_logs(platform.client, run.name)
    assert f"total=10 gpus={done.status.placement.gpu_indices[0]}" in logs
    assert "threads=1,1" in logs  # math libraries' thread pools sized to the run's CPUs (the default, 1)

    results = await platform.client.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=run.name))
    assert Path(results.local.path, "total.txt").read_text() == "10"
    assert "total=10" in Path(results.local.path, "logs", "training.log").read_text()

    usage = await usage_ms(platform, run.name)
    billed = sum(r.gpu_milliseconds for r in usage.usage_records)
    expected = 1 * (transition_ms(done, run_pb2.RUN_STATE_COMPLETED) - transition_ms(done, run_pb2.RUN_STATE_ASSIGNED))
    assert billed == expected > 0
    assert usage.total_gpu_milliseconds == billed


async def test_failing_command_ends_failed_with_exit_code_and_log_tail(platform: Platform) -> None:
    command = "python -c \"import sys; print('about to fail'); sys.exit(3)\""
    run = await submit(platform.client, manifest(command))
    done = await wait_for(platform.client, run.name)

    assert done.status.state == run_pb2.RUN_STATE_FAILED
    assert done.status.termination_reason == run_pb2.TERMINATION_REASON_COMMAND_FAILED
    assert done.status.exit_code == 3
    assert any("about to fail" in line for line in done.status.log_tail)
    usage = await usage_ms(platform, run.name)
    expected = transition_ms(done, run_pb2.RUN_STATE_FAILED) - transition_ms(done, run_pb2.RUN_STATE_ASSIGNED)
    assert usage.usage_records[0].gpu_milliseconds == expected


async def test_cancel_while_running_kills_the_tree_uploads_partial_results_and_closes_usage(
    platform: Platform,
) -> None:
    script = (
        "import os, subprocess, sys, time, pathlib\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        "print(f'pids={os.getpid()},{child.pid}', flush=True)\n"
        "pathlib.Path(os.environ['RESULT_DIR'], 'partial.txt').write_text('epoch 1')\n"
        "time.sleep(300)\n"
    )
    run = await submit(platform.client, manifest("python work.py"), pack({"work.py": script}))
    await wait_for(platform.client, run.name, {run_pb2.RUN_STATE_RUNNING})
    logs = ""
    for _ in range(200):
        logs = await read_logs(platform.client, run.name)
        if "pids=" in logs:
            break
        await asyncio.sleep(0.05)
    match = re.search(r"pids=(\d+),(\d+)", logs)
    assert match, logs
    pids = [int(match.group(1)), int(match.group(2))]

    await platform.client.CancelRun(gateway_pb2.CancelRunRequest(name=run.name))
    done = await wait_for(platform.client, run.name)

    assert done.status.state == run_pb2.RUN_STATE_CANCELLED
    assert done.status.termination_reason == run_pb2.TERMINATION_REASON_USER
    assert all(process_gone(pid) for pid in pids), pids
    results = await platform.client.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=run.name))
    assert Path(results.local.path, "partial.txt").read_text() == "epoch 1"
    usage = await usage_ms(platform, run.name)
    expected = transition_ms(done, run_pb2.RUN_STATE_CANCELLED) - transition_ms(done, run_pb2.RUN_STATE_ASSIGNED)
    assert usage.usage_records[0].gpu_milliseconds == expected


async def test_invalid_manifest_is_refused_with_field_violations_and_nothing_stored(platform: Platform) -> None:
    bad = "name: x\nframework: {name: tensorflow}\ncommand: ''\nresources: {gpus: -1}\n"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(platform.client, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    violations: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [v.field for v in bad_request.field_violations]
    assert {"framework.name", "command", "resources.gpus"} <= set(violations)
    listed = await platform.client.ListRuns(gateway_pb2.ListRunsRequest())
    assert list(listed.runs) == []


async def test_run_that_can_never_fit_is_refused_and_nothing_stored(platform: Platform) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(platform.client, manifest("true", gpus=4))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "allows at most 1" in (caught.value.details() or "")
    listed = await platform.client.ListRuns(gateway_pb2.ListRunsRequest())
    assert list(listed.runs) == []


async def test_same_request_id_twice_makes_one_run(platform: Platform) -> None:
    text = manifest("true", gpus=0)
    first, second = await asyncio.gather(
        submit(platform.client, text, request_id="retry-me"), submit(platform.client, text, request_id="retry-me")
    )
    third = await submit(platform.client, text, request_id="retry-me")
    assert first.name == second.name == third.name
    listed = await platform.client.ListRuns(gateway_pb2.ListRunsRequest())
    assert [r.name for r in listed.runs] == [first.name]
    await wait_for(platform.client, first.name)


async def test_free_account_runs_one_gpu_run_at_a_time(platform: Platform) -> None:
    runs = [await submit(platform.client, manifest("python -c 'import time; time.sleep(1)'")) for _ in range(2)]
    for _ in range(100):  # the decision round after the second submission sets its position
        second = await platform.client.GetRun(gateway_pb2.GetRunRequest(name=runs[1].name))
        if second.status.queue_position:
            break
        await asyncio.sleep(0.02)
    assert second.status.state == run_pb2.RUN_STATE_QUEUED
    assert second.status.queue_position == 1 and "quota" in second.status.wait_reason
    done = [await wait_for(platform.client, r.name) for r in runs]
    assert all(d.status.state == run_pb2.RUN_STATE_COMPLETED for d in done)
    first_end = transition_ms(done[0], run_pb2.RUN_STATE_COMPLETED)
    assert transition_ms(done[1], run_pb2.RUN_STATE_ASSIGNED) >= first_end


async def test_thread_pools_follow_the_runs_cpus_unless_its_environment_says(platform: Platform) -> None:
    command = "echo threads=$OMP_NUM_THREADS,$MKL_NUM_THREADS,$OPENBLAS_NUM_THREADS"
    text = (
        f"name: threads\nframework: {{name: python}}\ncommand: {command!r}\n"
        "resources: {gpus: 0, cpus: 2.5}\nresults: {bucket: results}\nenvironment: {MKL_NUM_THREADS: 8}\n"
    )
    run = await submit(platform.client, text)
    done = await wait_for(platform.client, run.name)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status.message
    assert "threads=2,8,2" in await read_logs(platform.client, run.name)
