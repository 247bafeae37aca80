"""Scheduling through the real services: tier quotas across accounts, drain, max runtime, lost runners."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dlaas.gateway.v1 import cluster_pb2, cluster_pb2_grpc, gateway_pb2, gateway_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common.telemetry import RPC_HANDLED
from services.scheduler.settings import Tier
from tests.conftest import DatabaseFactory
from tests.support import (
    TERMINAL,
    Platform,
    manifest,
    pack,
    process_gone,
    service_channel,
    start_platform,
    submit,
    transition_ms,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
async def one_gpu(sqlite_databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[Platform]:
    platform = await start_platform(sqlite_databases, tmp_path, virtual_gpus=1)
    yield platform
    await platform.stop()


@pytest.fixture
async def four_gpus(sqlite_databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[Platform]:
    platform = await start_platform(sqlite_databases, tmp_path, virtual_gpus=4)
    yield platform
    await platform.stop()


def interval(run: gateway_pb2.Run) -> tuple[int, int]:
    end = next(t.time.ToMilliseconds() for t in reversed(run.status.transitions) if t.state in TERMINAL)
    return transition_ms(run, run_pb2.RUN_STATE_ASSIGNED), end


async def test_a_free_account_runs_one_at_a_time_while_another_runs_beside_it(
    four_gpus: Platform,
) -> None:
    p = four_gpus
    second_channel = await p.account_channel("second")
    sleep = manifest("python -c 'import time; time.sleep(0.6)'")
    first_runs = [await submit(p.client, sleep) for _ in range(5)]
    other = await submit(gateway_pb2_grpc.TrainingServiceStub(second_channel), sleep)

    queue = await cluster_pb2_grpc.ClusterServiceStub(p.channel).ListQueue(cluster_pb2.ListQueueRequest())
    assert [e.position for e in queue.entries] == list(range(1, len(queue.entries) + 1))
    assert queue.entries and all(e.run.startswith("accounts/default/") for e in queue.entries)
    assert "quota" in queue.entries[0].wait_reason

    done = [await wait_for(p.client, r.name) for r in first_runs]
    other_done = await wait_for(gateway_pb2_grpc.TrainingServiceStub(second_channel), other.name)
    assert all(r.status.state == run_pb2.RUN_STATE_COMPLETED for r in [*done, other_done])
    spans = sorted(interval(r) for r in done)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "two runs of a free account held GPUs at once"
    other_start, other_end = interval(other_done)
    assert any(start < other_end and other_start < end for start, end in spans), "the other account waited"


async def test_set_tier_lets_queued_runs_start_and_drain_stops_new_ones(four_gpus: Platform) -> None:
    p = four_gpus
    admin = cluster_pb2_grpc.AdminServiceStub(p.admin)
    cluster = cluster_pb2_grpc.ClusterServiceStub(p.channel)
    await admin.DrainNode(cluster_pb2.DrainNodeRequest(name="local"))
    nodes = await cluster.ListNodes(cluster_pb2.ListNodesRequest())
    assert [(n.name, n.gpu_count, n.schedulable) for n in nodes.nodes] == [("local", 4, False)]

    runs = [await submit(p.client, manifest("python -c 'import time; time.sleep(30)'")) for _ in range(2)]
    await asyncio.sleep(0.3)
    queue = await cluster.ListQueue(cluster_pb2.ListQueueRequest())
    assert "drained" in queue.entries[0].wait_reason

    await admin.UndrainNode(cluster_pb2.UndrainNodeRequest(name="local"))
    await wait_for(p.client, runs[0].name, {run_pb2.RUN_STATE_RUNNING})
    second = await p.client.GetRun(gateway_pb2.GetRunRequest(name=runs[1].name))
    assert second.status.state == run_pb2.RUN_STATE_QUEUED

    tier = await admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="standard"))
    assert tier.max_gpus == 8
    await wait_for(p.client, runs[1].name, {run_pb2.RUN_STATE_RUNNING})
    nodes = await cluster.ListNodes(cluster_pb2.ListNodesRequest())
    assert nodes.nodes[0].gpus_in_use == 2
    for run in runs:
        await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=run.name))
        assert (await wait_for(p.client, run.name)).status.state == run_pb2.RUN_STATE_CANCELLED

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="gold"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retry_of_a_queued_run_is_answered_with_it_even_where_a_new_one_would_be_refused(
    sqlite_databases: DatabaseFactory, four_gpus: Platform
) -> None:
    """A two-GPU run queues on the standard tier; the account then moves to the free tier (one GPU),
    where a run like it could never start. A retry with the same request_id still gets the queued
    run, and the gateway keeps its spec; a new submission like it is refused."""
    p = four_gpus
    admin = cluster_pb2_grpc.AdminServiceStub(p.admin)
    await admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="standard"))
    await admin.DrainNode(cluster_pb2.DrainNodeRequest(name="local"))  # it stays queued
    text = manifest("python -c 'import time; time.sleep(30)'", gpus=2)
    first = await submit(p.client, text, request_id="two-gpus")
    await admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="free"))

    again = await submit(p.client, text, request_id="two-gpus")
    assert again.name == first.name and again.status.state == run_pb2.RUN_STATE_QUEUED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(p.client, text)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "never start" in (caught.value.details() or "")
    database = sqlite_databases.url("gateway").removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(database)) as db:
        stored = {name for (name,) in db.execute("SELECT name FROM gateway_run_specs")}
    assert stored == {first.name}
    await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=first.name))


async def test_a_run_past_its_max_runtime_fails_with_that_reason(four_gpus: Platform) -> None:
    run = await submit(four_gpus.client, manifest("sleep 60", max_runtime="2s"))
    done = await wait_for(four_gpus.client, run.name, timeout=30)
    assert done.status.state == run_pb2.RUN_STATE_FAILED
    assert done.status.termination_reason == run_pb2.TERMINATION_REASON_MAX_RUNTIME
    elapsed = transition_ms(done, run_pb2.RUN_STATE_FAILED) - transition_ms(done, run_pb2.RUN_STATE_ASSIGNED)
    assert 2000 <= elapsed < 15000


async def test_a_lost_runner_requeues_the_run_which_then_completes_once(four_gpus: Platform) -> None:
    p = four_gpus
    script = "import os, time, pathlib\nmarker = pathlib.Path(os.environ['JOB_STATE_DIR']).parent / 'first'\n"
    script += "if not marker.exists():\n    marker.write_text('x')\n    time.sleep(60)\nprint('second attempt')\n"
    code_dir_run = await submit(
        p.client,
        manifest("python work.py"),
        pack({"work.py": script}),
    )
    await wait_for(p.client, code_dir_run.name, {run_pb2.RUN_STATE_RUNNING})
    run_id = code_dir_run.name.rsplit("/", 1)[-1]
    job = p.jobs_dir / "default" / f"{run_id}-a1"
    for _ in range(200):  # the command marks its first attempt before sleeping
        if (job.parent / "first").exists():
            break
        await asyncio.sleep(0.05)
    pid = int((job / "runner.pid").read_text())
    state = json.loads((job / "state.json").read_text())
    os.kill(pid, signal.SIGKILL)  # the runner is lost; its command (sleeping 60 s) is left behind

    done = await wait_for(p.client, code_dir_run.name, timeout=60)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status
    assert process_gone(state["command_pgid"]), "the lost attempt's command kept running beside the next one"
    assert done.status.attempt == 2
    states = [t.state for t in done.status.transitions]
    assert states.count(run_pb2.RUN_STATE_ASSIGNED) == 2 and states.count(run_pb2.RUN_STATE_COMPLETED) == 1
    for _ in range(100):
        usage = await p.client.ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=code_dir_run.name))
        if len(usage.usage_records) == 2 and not any(r.accruing for r in usage.usage_records):
            break
        await asyncio.sleep(0.05)
    assert sorted(r.attempt for r in usage.usage_records) == [1, 2]


async def test_the_monthly_allowance_holds_runs_that_would_exceed_it_and_refuses_when_used_up(
    sqlite_databases: DatabaseFactory, tmp_path: Path
) -> None:
    # 0.002 GPU-hours = 7.2 GPU-seconds a month.
    tiers = {"free": Tier(max_gpus=1, monthly_gpu_hours=0.002), "standard": Tier(max_gpus=8, monthly_gpu_hours=0)}
    p = await start_platform(sqlite_databases, tmp_path, virtual_gpus=2, tiers=tiers)
    try:
        fits = await submit(p.client, manifest("python -c 'import time; time.sleep(1)'", max_runtime="5s"))
        too_long = await submit(p.client, manifest("true", max_runtime="1h"))
        done = await wait_for(p.client, fits.name)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED
        waiting = await p.client.GetRun(gateway_pb2.GetRunRequest(name=too_long.name))
        assert waiting.status.state == run_pb2.RUN_STATE_QUEUED
        assert waiting.status.wait_reason.startswith("allowance:"), waiting.status.wait_reason

        admin = cluster_pb2_grpc.AdminServiceStub(p.admin)
        await admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="standard"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit(p.client, manifest("true"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "used up" in (caught.value.details() or "")
        await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=too_long.name))
    finally:
        await p.stop()


async def test_concurrent_submissions_beyond_the_queue_cap_are_refused_and_leave_nothing(
    sqlite_databases: DatabaseFactory, tmp_path: Path
) -> None:
    """Twelve submissions at once against a cap of five queued runs (they are written in batches):
    five queue, seven are QUEUE_FULL, and nothing of the refused ones is kept; a retry of a queued
    one in the same burst answers that run."""
    tiers = {"free": Tier(max_gpus=1, max_queued_runs=5), "standard": Tier(max_gpus=8)}
    p = await start_platform(sqlite_databases, tmp_path, virtual_gpus=1, tiers=tiers)
    try:
        holder = await submit(p.client, manifest("python -c 'import time; time.sleep(30)'"))
        await wait_for(p.client, holder.name, {run_pb2.RUN_STATE_RUNNING})
        text = manifest("true")
        calls = [submit(p.client, text, request_id=f"burst-{i}") for i in range(12)]
        calls.append(submit(p.client, text, request_id="burst-0"))
        answers = await asyncio.gather(*calls, return_exceptions=True)
        queued = [a for a in answers if isinstance(a, gateway_pb2.Run)]
        refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
        assert len(refused) + len(queued) == len(answers), answers
        assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("5 queued runs" in (r.details() or "") for r in refused)
        names = {r.name for r in queued}
        assert len(names) == 5, names  # the retry of burst-0 answered burst-0's run, or was refused with it
        listed = await p.client.ListRuns(gateway_pb2.ListRunsRequest(page_size=100))
        assert {r.name for r in listed.runs} == names | {holder.name}
        database = sqlite_databases.url("gateway").removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(database)) as db:
            stored = {name for (name,) in db.execute("SELECT name FROM gateway_run_specs")}
        assert stored == names | {holder.name}  # the gateway kept nothing of the refused submissions
        # So a retry of a refused one, once there is room, is a new submission.
        await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=next(iter(names))))
        refused_id = next(f"burst-{i}" for i, a in enumerate(answers[:12]) if isinstance(a, grpc.aio.AioRpcError))
        again = await submit(p.client, text, request_id=refused_id)
        assert again.name not in names and again.status.state == run_pb2.RUN_STATE_QUEUED
        await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=holder.name))
    finally:
        await p.stop()


async def test_arrivals_while_every_gpu_is_busy_wait_then_start_as_gpus_free(
    sqlite_databases: DatabaseFactory, tmp_path: Path
) -> None:
    """With the only GPU held, arrivals wake no decision round; the queue still shows them with
    their reason, and each starts once the GPU is free."""
    p = await start_platform(sqlite_databases, tmp_path, virtual_gpus=1)
    try:
        holder = await submit(p.client, manifest("python -c 'import time; time.sleep(1.5)'"))
        await wait_for(p.client, holder.name, {run_pb2.RUN_STATE_RUNNING})
        later = [await submit(p.client, manifest("python -c 'print(1)'", name=f"later-{i}")) for i in range(3)]
        queue = await cluster_pb2_grpc.ClusterServiceStub(p.channel).ListQueue(cluster_pb2.ListQueueRequest())
        assert [e.run for e in queue.entries] == [r.name for r in later]
        assert [e.position for e in queue.entries] == [1, 2, 3] and all(e.wait_reason for e in queue.entries)
        done = [await wait_for(p.client, r.name) for r in [holder, *later]]
        assert all(r.status.state == run_pb2.RUN_STATE_COMPLETED for r in done)
        spans = [interval(r) for r in done]
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end  # one GPU: one run at a time, in order
    finally:
        await p.stop()


async def test_a_burst_of_submissions_goes_to_the_scheduler_in_fewer_calls_each_answered_as_if_alone(
    one_gpu: Platform,
) -> None:
    """Submissions that arrive together share SubmitRuns calls; a refused one among them gets the
    status a lone submission gets (code, message, ErrorInfo), the others queue."""
    p = one_gpu
    holder = await submit(p.client, manifest("python -c 'import time; time.sleep(30)'"))
    await wait_for(p.client, holder.name, {run_pb2.RUN_STATE_RUNNING})
    method = "/dlaas.scheduler.v1.SchedulerService/SubmitRuns"
    calls_before = RPC_HANDLED.labels("scheduler", method, "OK")._value.get()
    alone = await asyncio.gather(submit(p.client, manifest("true", gpus=2)), return_exceptions=True)
    texts = [manifest("true", name=f"burst-{i}") for i in range(30)]
    texts[17] = manifest("true", gpus=2)  # more GPUs than the cluster has: refused
    answers = await asyncio.gather(*(submit(p.client, t) for t in texts), return_exceptions=True)
    calls = RPC_HANDLED.labels("scheduler", method, "OK")._value.get() - calls_before

    refused = answers[17]
    assert isinstance(refused, grpc.aio.AioRpcError) and isinstance(alone[0], grpc.aio.AioRpcError)
    assert refused.code() == alone[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == alone[0].details() and "can never start" in (refused.details() or "")
    status = rpc_status.from_call(refused)
    assert status is not None and status == rpc_status.from_call(alone[0])
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "RUN_NEVER_FITS"
    queued = [a for i, a in enumerate(answers) if i != 17 and isinstance(a, gateway_pb2.Run)]
    assert len(queued) == 29 and all(a.status.state == run_pb2.RUN_STATE_QUEUED for a in queued)
    assert [a.spec.display_name for a in queued] == [f"burst-{i}" for i in range(30) if i != 17]
    assert calls < 1 + 30, calls  # the lone one, then the burst shared calls
    listed = await p.client.ListRuns(gateway_pb2.ListRunsRequest(page_size=100))
    assert {r.name for r in listed.runs} == {a.name for a in queued} | {holder.name}
    await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=holder.name))


async def test_submit_runs_answers_each_run_in_order_and_refuses_an_empty_or_oversized_call(
    one_gpu: Platform,
) -> None:
    p = one_gpu
    async with service_channel(p.scheduler.address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        spec = run_pb2.RunSpec(command="sleep 30", resources=run_pb2.Resources(gpus=0))
        good = scheduler_pb2.Run(name="accounts/default/runs/run-batch-good", spec=spec)
        requests = [
            scheduler_pb2.SubmitRunRequest(run=good, tier="free"),
            scheduler_pb2.SubmitRunRequest(run=scheduler_pb2.Run(name="runs/bad", spec=spec), tier="free"),
            scheduler_pb2.SubmitRunRequest(
                run=scheduler_pb2.Run(name="accounts/default/runs/run-batch-none"), tier="free"
            ),
            scheduler_pb2.SubmitRunRequest(run=good, tier="free"),  # a retry, in the same call
            scheduler_pb2.SubmitRunRequest(
                run=scheduler_pb2.Run(name="accounts/default/runs/run-batch-tier", spec=spec), tier="gold"
            ),
        ]
        response = await scheduler.SubmitRuns(scheduler_pb2.SubmitRunsRequest(requests=requests))
        kinds = [r.WhichOneof("result") for r in response.results]
        assert kinds == ["run", "error", "error", "run", "error"]
        assert response.results[0].run.name == response.results[3].run.name == good.name
        assert response.results[0].run.create_time == response.results[3].run.create_time
        for index, field in ((1, "run.name"), (2, "run.spec.command"), (4, "tier")):
            error = response.results[index].error
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], error
            bad = error_details_pb2.BadRequest()
            assert any(d.Unpack(bad) for d in error.details)
            assert [v.field for v in bad.field_violations] == [field]
        for wrong, count in (([], "at least one"), ([requests[0]] * 501, "at most 500")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await scheduler.SubmitRuns(scheduler_pb2.SubmitRunsRequest(requests=wrong))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert count in (refused.value.details() or "")
        cancelled = await scheduler.CancelRun(scheduler_pb2.CancelRunRequest(name=good.name))
        assert cancelled.status.state == run_pb2.RUN_STATE_CANCELLED


async def test_a_submit_runs_call_checks_each_accounts_monthly_allowance_once(one_gpu: Platform) -> None:
    """Runs with GPUs on a tier with a monthly allowance are checked against the account's usage
    in metering: once per account of a call, not once per run (a burst of a free account's
    submissions would otherwise cost metering a call each)."""
    p = one_gpu
    holder = await submit(p.client, manifest("python -c 'import time; time.sleep(30)'"))
    await wait_for(p.client, holder.name, {run_pb2.RUN_STATE_RUNNING})  # arrivals now wake no round
    usage = "/dlaas.metering.v1.MeteringService/GetMonthlyUsage"
    spec = run_pb2.RunSpec(command="true", resources=run_pb2.Resources(gpus=1))
    requests = [
        scheduler_pb2.SubmitRunRequest(run=scheduler_pb2.Run(name=f"accounts/{account}/runs/run-m{i}", spec=spec))
        for i, account in enumerate(["default"] * 5 + ["second"] * 3)
    ]
    before = RPC_HANDLED.labels("metering", usage, "OK")._value.get()
    async with service_channel(p.scheduler.address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        response = await scheduler.SubmitRuns(scheduler_pb2.SubmitRunsRequest(requests=requests))
        looked_up = RPC_HANDLED.labels("metering", usage, "OK")._value.get() - before
        for result in response.results:
            await scheduler.CancelRun(scheduler_pb2.CancelRunRequest(name=result.run.name))

    assert [r.run.status.state for r in response.results] == [run_pb2.RUN_STATE_QUEUED] * 8
    assert looked_up == 2
    await p.client.CancelRun(gateway_pb2.CancelRunRequest(name=holder.name))
