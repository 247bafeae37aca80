"""SchedulerService: proto ↔ domain, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common import names, pagination
from services.common.batching import MAX_BATCH
from services.common.errors import InvalidArgument
from services.common.logs import bound_run
from services.common.server import status_for
from services.scheduler.adapters.db import RunRow
from services.scheduler.domain.model import QUEUED, Node, Waiting, results_location
from services.scheduler.runtime.scheduler import Scheduler, Submission

Context = grpc.aio.ServicerContext[Any, Any]
MAX_POINTS_PER_BATCH = 500  # what the runner sends at most (dlaas.runner.metrics.BATCH_POINTS)
MAX_METRIC_NAME = 128


def to_proto(run: RunRow, waiting: Waiting | None = None) -> scheduler_pb2.Run:
    spec = run_pb2.RunSpec.FromString(run.spec)
    status = run_pb2.RunStatus(
        state=run.state,  # type: ignore[arg-type]
        attempt=run.attempt,
        termination_reason=run.termination_reason,  # type: ignore[arg-type]
        message=run.message,
        log_tail=run.log_tail,
    )
    for state, time_ms in run.transitions:
        transition = status.transitions.add(state=state)
        transition.time.FromMilliseconds(time_ms)
    if run.node:
        status.placement.CopyFrom(
            run_pb2.Placement(node=run.node, gpu_type=run.gpu_type or "", gpu_indices=run.gpu_indices)
        )
    if run.exit_code is not None:
        status.exit_code = run.exit_code
    if run.state == QUEUED and waiting is not None:
        status.queue_position, status.wait_reason = waiting.position, waiting.reason
    if run.attempt > 0:
        status.results.CopyFrom(results_location(spec, run.name.rsplit("/", 1)[-1]))
    proto = scheduler_pb2.Run(name=run.name, spec=spec, status=status)
    if run.code:
        proto.code.CopyFrom(run_pb2.ObjectLocation.FromString(run.code))
    proto.create_time.FromMilliseconds(run.created_ms)
    return proto


def _account(run: str) -> str:
    """The account of a run's name, or "" for a name that is not one."""
    try:
        return names.parse_run(run)[0]
    except InvalidArgument:
        return ""


def _submission(request: scheduler_pb2.SubmitRunRequest) -> Submission:
    """One run of a SubmitRuns call, checked as if it had come alone."""
    names.parse_run(request.run.name, "run.name")
    if not request.run.spec.command:
        raise InvalidArgument.field("run.spec.command", "is required")
    return Submission(request.run, request.tier or "free", dict(request.trace_context))


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler

    def _proto(self, run: RunRow) -> scheduler_pb2.Run:
        return to_proto(run, self.scheduler.waiting(run.name))

    async def SubmitRuns(
        self, request: scheduler_pb2.SubmitRunsRequest, context: Context
    ) -> scheduler_pb2.SubmitRunsResponse:
        if not request.requests:
            raise InvalidArgument.field("requests", "at least one run is required")
        if len(request.requests) > MAX_BATCH:
            raise InvalidArgument.field("requests", f"at most {MAX_BATCH} runs a call")
        outcomes: list[RunRow | BaseException | None] = []
        submissions: list[Submission] = []
        for item in request.requests:
            try:
                submissions.append(_submission(item))
                outcomes.append(None)  # the scheduler's answer, below
            except Exception as exc:  # noqa: BLE001 - this run's answer, the others go on
                outcomes.append(exc)
        answers = iter(await self.scheduler.submit_many(submissions))
        response = scheduler_pb2.SubmitRunsResponse()
        for item, outcome in zip(request.requests, outcomes, strict=True):
            outcome = next(answers) if outcome is None else outcome
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, RunRow):
                response.results.add(run=self._proto(outcome))
            else:
                # The account's logs carry what went wrong with its run (a call carries several accounts').
                with bound_run(item.run.name, _account(item.run.name)):
                    response.results.add(error=status_for(outcome, f"SubmitRuns of {item.run.name}"))
        return response

    async def GetRun(self, request: scheduler_pb2.GetRunRequest, context: Context) -> scheduler_pb2.Run:
        names.parse_run(request.name)
        return self._proto(await self.scheduler.get(request.name))

    async def ListRuns(
        self, request: scheduler_pb2.ListRunsRequest, context: Context
    ) -> scheduler_pb2.ListRunsResponse:
        account = names.parse_account(request.parent)
        size = pagination.page_size(request.page_size, default=50, maximum=1000)
        offset = pagination.decode_token(request.page_token, request.parent)
        runs, total = await self.scheduler.list_runs(account, offset, size)
        token = pagination.encode_token(offset + size, request.parent) if offset + size < total else ""
        return scheduler_pb2.ListRunsResponse(runs=[self._proto(r) for r in runs], next_page_token=token)

    async def CancelRun(self, request: scheduler_pb2.CancelRunRequest, context: Context) -> scheduler_pb2.Run:
        names.parse_run(request.name)
        return self._proto(await self.scheduler.cancel(request.name, request.reason))

    async def WatchRun(
        self, request: scheduler_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.Run]:
        names.parse_run(request.name)
        async for run in self.scheduler.watch(request.name):
            yield self._proto(run)

    async def StreamRunLogs(
        self, request: scheduler_pb2.StreamRunLogsRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.StreamRunLogsResponse]:
        names.parse_run(request.name)
        async for chunk in self.scheduler.logs(request.name, request.follow):
            yield scheduler_pb2.StreamRunLogsResponse(data=chunk)

    async def ReportRunProgress(
        self, request: scheduler_pb2.ReportRunProgressRequest, context: Context
    ) -> scheduler_pb2.ReportRunProgressResponse:
        names.parse_run(request.name)
        if request.state == run_pb2.RUN_STATE_UNSPECIFIED:
            raise InvalidArgument.field("state", "is required")
        cancel = await self.scheduler.report(request)
        return scheduler_pb2.ReportRunProgressResponse(cancel_requested=cancel)

    async def ReportRunMetrics(
        self, request: scheduler_pb2.ReportRunMetricsRequest, context: Context
    ) -> scheduler_pb2.ReportRunMetricsResponse:
        names.parse_run(request.name)
        # The runner sends at most 500 points a batch; a run's own code holds its token, so the
        # bounds are enforced here, where the scheduler's memory is at stake.
        if len(request.points) > MAX_POINTS_PER_BATCH:
            raise InvalidArgument.field("points", f"at most {MAX_POINTS_PER_BATCH} points a call")
        for i, point in enumerate(request.points):
            if not point.name or len(point.name) > MAX_METRIC_NAME:
                raise InvalidArgument.field(f"points[{i}].name", f"must be 1 to {MAX_METRIC_NAME} characters")
        return scheduler_pb2.ReportRunMetricsResponse(cancel_requested=await self.scheduler.relay_metrics(request))

    async def StreamRelayedMetrics(
        self, request: scheduler_pb2.StreamRelayedMetricsRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.StreamRelayedMetricsResponse]:
        async for batch in self.scheduler.relay.follow(request.relay_id, request.after_position):
            yield scheduler_pb2.StreamRelayedMetricsResponse(
                relay_id=self.scheduler.relay.relay_id,
                position=batch.position,
                run=batch.run,
                attempt=batch.attempt,
                points=batch.points,
            )

    async def ListNodes(
        self, request: scheduler_pb2.ListNodesRequest, context: Context
    ) -> scheduler_pb2.ListNodesResponse:
        return scheduler_pb2.ListNodesResponse(nodes=[_node(n, used) for n, used in await self.scheduler.node_states()])

    async def DrainNode(self, request: scheduler_pb2.DrainNodeRequest, context: Context) -> scheduler_pb2.Node:
        return _node(await self.scheduler.set_drained(request.name, True))

    async def UndrainNode(self, request: scheduler_pb2.UndrainNodeRequest, context: Context) -> scheduler_pb2.Node:
        return _node(await self.scheduler.set_drained(request.name, False))

    async def ListQueue(
        self, request: scheduler_pb2.ListQueueRequest, context: Context
    ) -> scheduler_pb2.ListQueueResponse:
        account = names.parse_account(request.parent) if request.parent else None
        size = pagination.page_size(request.page_size, default=100, maximum=1000)
        offset = pagination.decode_token(request.page_token, request.parent)
        entries = await self.scheduler.queue(account)
        page = entries[offset : offset + size]
        token = pagination.encode_token(offset + size, request.parent) if offset + size < len(entries) else ""
        response = scheduler_pb2.ListQueueResponse(next_page_token=token)
        for run, waiting in page:
            entry = response.entries.add(
                run=run.name,
                display_name=run_pb2.RunSpec.FromString(run.spec).display_name,
                position=waiting.position,
                wait_reason=waiting.reason,
                gpus=run.gpus * run.learners,
                gpu_type=run.gpu_type_wanted,
            )
            entry.create_time.FromMilliseconds(run.created_ms)
            if waiting.estimated_start_ms:
                entry.estimated_start_time.FromMilliseconds(waiting.estimated_start_ms)
        return response

    async def SetAccountTier(
        self, request: scheduler_pb2.SetAccountTierRequest, context: Context
    ) -> scheduler_pb2.AccountTier:
        account = names.parse_account(request.account, "account")
        tier = await self.scheduler.set_tier(account, request.tier)
        return scheduler_pb2.AccountTier(
            account=request.account, tier=request.tier, max_gpus=tier.max_gpus, max_queued_runs=tier.max_queued_runs
        )


def _node(node: Node, gpus_in_use: int = 0) -> scheduler_pb2.Node:
    return scheduler_pb2.Node(
        name=node.name,
        gpu_type=node.gpu_type,
        gpu_count=node.gpu_count,
        gpus_in_use=gpus_in_use,
        schedulable=node.schedulable,
    )
