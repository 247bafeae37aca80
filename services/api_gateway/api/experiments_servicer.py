"""ExperimentService and MetricsService: proto ↔ application calls, nothing else."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from dlaas.gateway.v1 import experiments_pb2, experiments_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.api_gateway.adapters.experiments_db import ExperimentRow, StoredPoint
from services.api_gateway.api.auth import authenticate
from services.api_gateway.domain import search
from services.api_gateway.domain.experiments import config_from_json
from services.api_gateway.runtime.experiments import TERMINAL_RUN, Experiments, TrialView
from services.api_gateway.runtime.gateway import Gateway
from services.api_gateway.runtime.metrics import Metrics

Context = grpc.aio.ServicerContext[Any, Any]

_GOALS = {
    search.MAXIMIZE: experiments_pb2.OBJECTIVE_GOAL_MAXIMIZE,
    search.MINIMIZE: experiments_pb2.OBJECTIVE_GOAL_MINIMIZE,
}


def experiment_proto(
    row: ExperimentRow, trials: list[TrialView] | None = None, count: int = 0
) -> experiments_pb2.Experiment:
    config = config_from_json(row.config)
    proto = experiments_pb2.Experiment(
        name=row.name,
        display_name=row.display_name,
        method=config.method,
        objective_metric=config.metric,
        objective_goal=_GOALS[config.goal],
        max_runs=row.max_runs,
        max_parallel_runs=config.max_parallel_runs,
        max_failed_runs=config.max_failed_runs,
        state=row.state,  # type: ignore[arg-type]
        message=row.message,
        best_run=row.best_run or "",
        trial_count=len(trials) if trials is not None else count,
        parameters_json=config.to_json(),
    )
    if row.best_value is not None:
        proto.best_value = row.best_value
    proto.create_time.FromMilliseconds(row.created_ms)
    causes: dict[str, list[str]] = {}
    for view in trials or []:
        proto.trials.append(_trial(view))
        if view.row.state == run_pb2.RUN_STATE_FAILED:
            causes.setdefault(view.row.failure_cause or "failed", []).append(view.row.run)
    for cause, runs in sorted(causes.items(), key=lambda item: (-len(item[1]), item[0])):
        proto.failure_groups.add(cause=cause, runs=runs)
    return proto


def _trial(view: TrialView) -> experiments_pb2.Trial:
    row = view.row
    trial = experiments_pb2.Trial(
        index=row.trial,
        run=row.run,
        parameters=row.parameters,
        state=row.state,  # type: ignore[arg-type]
        termination_reason=row.termination_reason,  # type: ignore[arg-type]
        objective_step=row.objective_step,
        latest_metrics=row.latest,
        retry_of=row.retry_of or 0,
        extension=row.extension,
        failure_cause=row.failure_cause if row.state == run_pb2.RUN_STATE_FAILED else "",
        objective_missing=view.objective_missing,
        queue_position=view.queue_position,
        gpus=view.gpus,
    )
    if row.objective is not None and not math.isnan(row.objective):
        trial.objective_value = row.objective
    if view.running_ms:
        trial.start_time.FromMilliseconds(view.running_ms)
    if view.ended_ms and row.state in TERMINAL_RUN:
        trial.end_time.FromMilliseconds(view.ended_ms)
    return trial


def _point(point: StoredPoint) -> run_pb2.MetricPoint:
    proto = run_pb2.MetricPoint(name=point.metric, value=point.value, step=point.step, sequence=point.sequence)
    proto.time.FromMilliseconds(point.time_ms)
    return proto


class ExperimentServicer(experiments_pb2_grpc.ExperimentServiceServicer):
    def __init__(self, experiments: Experiments, gateway: Gateway):
        self.experiments = experiments
        self.gateway = gateway

    async def CreateExperiment(
        self, request: experiments_pb2.CreateExperimentRequest, context: Context
    ) -> experiments_pb2.Experiment:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        if request.validate_only:
            spec, config = self.experiments.parse(request.manifest)
            return experiments_pb2.Experiment(
                display_name=spec.display_name,
                method=config.method,
                objective_metric=config.metric,
                objective_goal=_GOALS[config.goal],
                max_runs=config.max_runs,
                max_parallel_runs=config.max_parallel_runs,
                max_failed_runs=config.max_failed_runs,
                parameters_json=config.to_json(),
            )
        row = await self.experiments.create(
            who.account, who.tier, request.manifest, request.code_archive, request.request_id
        )
        return experiment_proto(row)

    async def GetExperiment(
        self, request: experiments_pb2.GetExperimentRequest, context: Context
    ) -> experiments_pb2.Experiment:
        who = authenticate(context)
        row, trials = await self.experiments.get(self.experiments.name(who.account, request.name))
        return experiment_proto(row, trials)

    async def ListExperiments(
        self, request: experiments_pb2.ListExperimentsRequest, context: Context
    ) -> experiments_pb2.ListExperimentsResponse:
        who = authenticate(context)
        self.gateway.account_parent(who.account, request.parent)
        rows, counts, token = await self.experiments.list_experiments(
            who.account, request.page_size, request.page_token
        )
        return experiments_pb2.ListExperimentsResponse(
            experiments=[experiment_proto(r, count=counts.get(r.name, 0)) for r in rows], next_page_token=token
        )

    async def ExtendExperiment(
        self, request: experiments_pb2.ExtendExperimentRequest, context: Context
    ) -> experiments_pb2.Experiment:
        who = authenticate(context)
        row = await self.experiments.extend(
            self.experiments.name(who.account, request.name), request.runs, request.request_id
        )
        return experiment_proto(row)

    async def CancelExperiment(
        self, request: experiments_pb2.CancelExperimentRequest, context: Context
    ) -> experiments_pb2.Experiment:
        who = authenticate(context)
        return experiment_proto(await self.experiments.cancel(self.experiments.name(who.account, request.name)))


class MetricsServicer(experiments_pb2_grpc.MetricsServiceServicer):
    def __init__(self, metrics: Metrics, gateway: Gateway):
        self.metrics = metrics
        self.gateway = gateway

    async def ListRunMetrics(
        self, request: experiments_pb2.ListRunMetricsRequest, context: Context
    ) -> experiments_pb2.ListRunMetricsResponse:
        who = authenticate(context)
        name = self.gateway.run_name(who.account, request.name)
        await self.gateway.get_run(name)  # NOT_FOUND for a run that is not there
        points, token = await self.metrics.list_points(
            name, list(request.metrics), request.page_size, request.page_token
        )
        return experiments_pb2.ListRunMetricsResponse(points=[_point(p) for p in points], next_page_token=token)

    async def StreamRunMetrics(
        self, request: experiments_pb2.StreamRunMetricsRequest, context: Context
    ) -> AsyncIterator[experiments_pb2.StreamRunMetricsResponse]:
        who = authenticate(context)
        name = self.gateway.run_name(who.account, request.name)
        await self.gateway.get_run(name)

        async def is_terminal() -> bool:
            return (await self.gateway.get_run(name)).status.state in TERMINAL_RUN

        async for points in self.metrics.follow(name, request.follow, is_terminal):
            yield experiments_pb2.StreamRunMetricsResponse(points=[_point(p) for p in points])


def register(server: grpc.aio.Server, experiments: Experiments, metrics: Metrics, gateway: Gateway) -> None:
    experiments_pb2_grpc.add_ExperimentServiceServicer_to_server(ExperimentServicer(experiments, gateway), server)
    experiments_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(metrics, gateway), server)
