"""Experiments: create, read, extend, cancel, and the controller that drives their trials.

The controller is one loop in the gateway. Each pass, for every running experiment, it reads
its trials' runs from the scheduler and their metrics from the gateway's own table, stops ASHA's
losers (CancelRun with reason EARLY_STOPPED), queues retries of failed trials, submits new
trials up to max_parallel_runs, and names the best. Everything it decides is written to its
tables before it acts (a trial row before its submission, which is idempotent on the run's name;
a rung's value before the cancel), so a restarted gateway carries on where it stopped.
One gateway process drives experiments (a lock orders the loop and the API's changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import yaml

from dlaas.scheduler.v1 import scheduler_pb2
from dlaas.storage.v1 import storage_pb2
from dlaas.types.v1 import run_pb2
from services.api_gateway.adapters.experiments_db import (
    ExperimentRepository,
    ExperimentRow,
    MetricRepository,
    TrialRow,
)
from services.api_gateway.domain import experiments as domain
from services.api_gateway.domain import search
from services.api_gateway.domain.archive import check_code_archive
from services.api_gateway.runtime.gateway import REFUSALS, Gateway, check_request_id
from services.common import names, pagination
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.timeutil import now_ms

log = logging.getLogger(__name__)

RUNNING, COMPLETED, FAILED, CANCELLED = 1, 2, 3, 4  # dlaas.gateway.v1.ExperimentState
TERMINAL_RUN = {run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED}
PASS_INTERVAL_S = 1.0
_SETTLE_MS = 1000
MIN_PASS_GAP_S = 0.1


def experiment_name(account: str, experiment_id: str) -> str:
    return f"accounts/{account}/experiments/{experiment_id}"


@dataclass
class _Seen:
    """What the controller has read of one run's metrics (rebuilt from the table after a restart)."""

    after: tuple[int, int] = (0, 0)
    objective: list[tuple[int, float]] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)
    reported_nan: bool = False


@dataclass(frozen=True)
class TrialView:
    """A trial as the API shows it."""

    row: TrialRow
    objective_missing: bool
    queue_position: int
    gpus: str
    running_ms: int | None
    ended_ms: int | None


class Experiments:
    def __init__(self, gateway: Gateway, repo: ExperimentRepository, metrics: MetricRepository):
        self.gateway = gateway
        self.repo = repo
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._seen: dict[str, _Seen] = defaultdict(_Seen)
        self._watched: set[str] = set()

    # ---- API operations -------------------------------------------------------------------

    def name(self, account: str, name: str, field_name: str = "name") -> str:
        if names.is_id(name):
            return experiment_name(account, name)
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "accounts" or parts[2] != "experiments" or not names.is_id(parts[3]):
            raise InvalidArgument.field(field_name, f"must look like accounts/{{account}}/experiments/{{id}}: {name!r}")
        if parts[1] != account:
            raise NotFound(f"experiment {name} not found")
        return name

    def parse(self, manifest: str) -> tuple[Any, domain.ExperimentConfig]:
        """The training spec and the experiment config of an experiment manifest, checked."""
        if not manifest.strip():
            raise InvalidArgument.field("manifest", "is required")
        try:
            document = yaml.safe_load(manifest)
        except yaml.YAMLError as exc:
            raise InvalidArgument.field("manifest", f"is not valid YAML: {exc}") from exc
        if not isinstance(document, dict):
            raise InvalidArgument.field("manifest", "must be a mapping")
        training, section = domain.split_manifest(document)
        config = domain.parse_experiment(section)
        parsed = self.gateway.parse(yaml.safe_dump(training, sort_keys=False))
        if parsed.inline_connections:
            raise InvalidArgument.field("data", "an experiment names its connections; inline credentials are refused")
        return parsed.spec, config

    async def create(
        self, account: str, tier: str, manifest: str, code_archive: bytes, request_id: str
    ) -> ExperimentRow:
        spec, config = self.parse(manifest)
        check_request_id(request_id)
        settings = self.gateway.settings
        check_code_archive(code_archive, settings.max_code_archive_bytes, settings.max_code_archive_files)
        if request_id:
            earlier = await self.repo.by_request(account, request_id)
            if earlier is not None:
                return earlier
        experiment_id = "exp-" + uuid.uuid4().hex[:10]
        code_key = None
        if code_archive:
            code_key = f"{experiment_id}/model.tar.gz"
            location = run_pb2.ObjectLocation(bucket=self.gateway.settings.code_bucket, prefix=code_key)
            await self.gateway.peers.storage.WriteObject(
                storage_pb2.WriteObjectRequest(
                    parent=names.account_name(account), location=location, data=code_archive
                ),
                timeout=60,
            )
        row = ExperimentRow(
            name=experiment_name(account, experiment_id),
            account=account,
            request_id=request_id or None,
            display_name=spec.display_name,
            manifest=manifest,
            spec=spec.SerializeToString(),
            code_key=code_key,
            config=config.to_json(),
            tier=tier,
            max_runs=config.max_runs,
            extensions=0,
            extend_request_id=None,
            state=RUNNING,
            message="",
            best_run=None,
            best_value=None,
            created_ms=now_ms(),
        )
        if not await self.repo.add(row):
            earlier = await self.repo.by_request(account, request_id)
            assert earlier is not None
            return earlier
        self.wake()
        return row

    async def get(self, name: str) -> tuple[ExperimentRow, list[TrialView]]:
        account = _account_of(name)
        experiment = await self.repo.get(account, name)
        if experiment is None:
            raise NotFound(f"experiment {name} not found")
        config = domain.config_from_json(experiment.config)
        rows = await self.repo.trials(account, name)
        now = now_ms()
        views: list[TrialView] = []
        for trial in rows:
            position, gpus = 0, ""
            live = trial.submitted and trial.state not in TERMINAL_RUN
            if live:
                try:
                    run = await self.gateway.get_run(trial.run)
                    trial.state, trial.termination_reason = run.status.state, run.status.termination_reason
                    position = run.status.queue_position
                    placement = run.status.placement
                    if placement.node:
                        gpus = f"{placement.gpu_type}:{','.join(map(str, placement.gpu_indices))}"
                except grpc.aio.AioRpcError:
                    pass
            missing = domain.objective_missing(
                trial.running_ms, now, trial.objective is not None, config.objective_grace_s
            ) or (trial.state in TERMINAL_RUN and trial.running_ms is not None and trial.objective is None)
            views.append(TrialView(trial, missing, position, gpus, trial.running_ms, trial.ended_ms))
        order = search.ranked(config.goal, {t.trial: t.objective for t in rows})
        by_index = {v.row.trial: v for v in views}
        return experiment, [by_index[i] for i in order]

    async def list_experiments(
        self, account: str, page_size: int, page_token: str
    ) -> tuple[list[ExperimentRow], dict[str, int], str]:
        parent = names.account_name(account)
        size = pagination.page_size(page_size, default=50, maximum=1000)
        offset = pagination.decode_token(page_token, parent)
        rows, total = await self.repo.list_for_account(account, offset, size)
        counts = await self.repo.trial_counts(account, [r.name for r in rows])
        token = pagination.encode_token(offset + size, parent) if offset + size < total else ""
        return rows, counts, token

    async def extend(self, name: str, runs: int, request_id: str = "") -> ExperimentRow:
        if runs <= 0:
            raise InvalidArgument.field("runs", f"must be at least 1, got {runs}")
        account = _account_of(name)
        async with self._lock:
            experiment = await self.repo.get(account, name)
            if experiment is None:
                raise NotFound(f"experiment {name} not found")
            if request_id and experiment.extend_request_id == request_id:
                return experiment  # a retry of the last extension
            if experiment.state == CANCELLED:
                raise FailedPrecondition(f"experiment {name} was cancelled")
            config = domain.config_from_json(experiment.config)
            capacity = config.capacity()
            if capacity is not None and experiment.max_runs + runs > capacity:
                raise InvalidArgument.field(
                    "runs",
                    f"the grid has {capacity} points and {experiment.max_runs} are taken; "
                    f"at most {capacity - experiment.max_runs} more",
                )
            if experiment.max_runs + runs > domain.MAX_RUNS_LIMIT:
                raise InvalidArgument.field("runs", f"an experiment has at most {domain.MAX_RUNS_LIMIT} runs")
            await self.repo.update(
                account,
                name,
                max_runs=experiment.max_runs + runs,
                extensions=experiment.extensions + 1,
                extend_request_id=request_id[:200] or None,
                state=RUNNING,
                message=f"extended by {runs} runs",
            )
        self.wake()
        found = await self.repo.get(account, name)
        assert found is not None
        return found

    async def cancel(self, name: str) -> ExperimentRow:
        account = _account_of(name)
        async with self._lock:
            experiment = await self.repo.get(account, name)
            if experiment is None:
                raise NotFound(f"experiment {name} not found")
            if experiment.state == RUNNING:
                await self.repo.update(account, name, state=CANCELLED, message="cancelled by the user")
                for trial in await self.repo.trials(account, name):
                    if trial.state not in TERMINAL_RUN:  # submitted or perhaps submitted: a lost answer
                        await self._cancel_run(trial.run, run_pb2.TERMINATION_REASON_USER)
        found = await self.repo.get(account, name)
        assert found is not None
        return found

    # ---- the controller ---------------------------------------------------------------------

    def wake(self, run: str = "") -> None:
        if not run or run in self._watched:
            self._wake.set()

    async def controller_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("experiment controller pass failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PASS_INTERVAL_S)
            await asyncio.sleep(max(0.0, MIN_PASS_GAP_S - (loop.time() - began)))

    async def run_pass(self) -> None:
        watched: set[str] = set()
        for experiment in await self.repo.in_state(RUNNING):
            async with self._lock:
                current = await self.repo.get(experiment.account, experiment.name)
                if current is None or current.state != RUNNING:
                    continue
                try:
                    watched |= await self._advance(current)
                except grpc.aio.AioRpcError as exc:
                    log.warning("experiment %s: %s: %s", current.name, exc.code().name, exc.details())
        self._watched = watched

    async def _advance(self, experiment: ExperimentRow) -> set[str]:
        config = replace(domain.config_from_json(experiment.config), max_runs=experiment.max_runs)
        account = experiment.account
        trials = await self.repo.trials(account, experiment.name)
        now = now_ms()
        for trial in trials:
            # An ended trial is read a little longer: its last points may still be on their way.
            if trial.submitted and (
                trial.state not in TERMINAL_RUN or (trial.ended_ms is not None and now - trial.ended_ms < _SETTLE_MS)
            ):
                await self._refresh(account, trial, config, now)
        await self._stop_losers(account, config, trials)
        await self._name_best(experiment, config, trials)  # before a completion, which readers take as final
        if experiment.state == RUNNING:
            failed = [t for t in trials if t.state == run_pb2.RUN_STATE_FAILED]
            if len(failed) > config.max_failed_runs:
                await self._fail(
                    experiment, trials, f"{len(failed)} trials failed; max_failed_runs is {config.max_failed_runs}"
                )
                return set()
            await self._fill(experiment, config, trials, now)
        return {t.run for t in trials if t.state not in TERMINAL_RUN}

    async def _refresh(self, account: str, trial: TrialRow, config: domain.ExperimentConfig, now: int) -> None:
        """The trial's run state and metrics, as now known."""
        run = await self.gateway.get_run(trial.run)
        status = run.status
        seen = self._seen[trial.run]
        points = await self.metrics.points(trial.run, after=seen.after)
        for point in points:
            seen.after = (point.attempt, point.sequence)
            seen.latest[point.metric] = point.value
            if point.metric == config.metric:
                seen.objective.append((point.step, point.value))
                seen.reported_nan |= math.isnan(point.value)
        changed = bool(points) or status.state != trial.state
        trial.latest = dict(seen.latest)
        values = [v for _, v in seen.objective]
        best = search.best_value(config.goal, values)
        if best is not None and not math.isnan(best):
            trial.objective = best
            trial.objective_step = next(s for s, v in seen.objective if v == best)
        trial.state, trial.termination_reason = status.state, status.termination_reason
        for transition in status.transitions:
            if transition.state == run_pb2.RUN_STATE_RUNNING:
                trial.running_ms = transition.time.ToMilliseconds()
            if transition.state in TERMINAL_RUN:
                trial.ended_ms = transition.time.ToMilliseconds()
        if status.state in TERMINAL_RUN:
            trial.exit_code = status.exit_code if status.HasField("exit_code") else None
            if status.state == run_pb2.RUN_STATE_FAILED and not trial.failure_cause.startswith("refused"):
                trial.failure_cause = domain.failure_cause(trial.exit_code, list(status.log_tail), seen.reported_nan)
            if trial.ended_ms is not None and now - trial.ended_ms >= _SETTLE_MS:
                self._seen.pop(trial.run, None)
        if changed:
            await self.repo.save_trial(account, trial)

    async def _stop_losers(self, account: str, config: domain.ExperimentConfig, trials: list[TrialRow]) -> None:
        if config.method != "asha":
            return
        for trial in trials:
            if not trial.submitted or trial.state in TERMINAL_RUN or trial.stop_requested:
                continue
            seen = self._seen.get(trial.run)
            if seen is None:
                continue
            stop_at = None
            for rung, value in sorted(search.crossed_rungs(config.asha, seen.objective, trial.rungs).items()):
                trial.rungs[rung] = value
                recorded = [t.rungs[rung] for t in trials if rung in t.rungs]
                if not config.asha.continues(config.goal, recorded, value):
                    stop_at = rung
                    break
                await self.repo.save_trial(account, trial)
            if stop_at is None:  # it went on from every rung it passed: is it still in each one's top?
                for rung in sorted(trial.rungs):
                    recorded = [t.rungs[rung] for t in trials if rung in t.rungs]
                    if config.asha.outranked(config.goal, recorded, trial.rungs[rung]):
                        stop_at = rung
                        break
            if stop_at is not None:
                trial.stop_requested = True
                await self.repo.save_trial(account, trial)
                log.info(
                    "%s stopped early at its step-%d rung (%s=%g)",
                    trial.run,
                    stop_at,
                    config.metric,
                    trial.rungs[stop_at],
                )
                await self._cancel_run(trial.run, run_pb2.TERMINATION_REASON_EARLY_STOPPED)

    async def _fill(
        self, experiment: ExperimentRow, config: domain.ExperimentConfig, trials: list[TrialRow], now: int
    ) -> None:
        for trial in trials:
            if not trial.submitted:
                await self._submit(experiment, trial)
        live = sum(1 for t in trials if t.state not in TERMINAL_RUN)
        retried = {t.retry_of for t in trials if t.retry_of is not None}
        retries = [
            t
            for t in trials
            if t.state == run_pb2.RUN_STATE_FAILED
            and t.trial not in retried
            and _retry_depth(t, trials) < config.retries
        ]
        originals = sum(1 for t in trials if t.retry_of is None)
        while live < config.max_parallel_runs:
            index = len(trials) + 1
            if retries:
                failed = retries.pop(0)
                trial = TrialRow(
                    experiment.name,
                    index,
                    _run_name(experiment, index),
                    failed.parameters,
                    experiment.extensions,
                    failed.trial,
                )
            elif originals < config.max_runs:
                originals += 1
                rendered = {k: search.render(v) for k, v in config.parameters(originals).items()}
                trial = TrialRow(
                    experiment.name, index, _run_name(experiment, index), rendered, experiment.extensions, None
                )
            else:
                break
            trial.state = run_pb2.RUN_STATE_QUEUED
            if not await self.repo.add_trial(experiment.account, trial):
                break  # the experiment is not (or no longer) there for its account
            trials.append(trial)
            live += 1
            await self._submit(experiment, trial)
        settling = any(t.ended_ms is not None and now - t.ended_ms < _SETTLE_MS for t in trials)
        if live == 0 and not retries and originals >= config.max_runs and not settling:
            best = search.best_trial(config.goal, {t.trial: t.objective for t in trials})
            if best is None:
                message = f"{len(trials)} trials ended; none reported {config.metric}"
            else:
                winner = trials[best - 1]
                run_id = winner.run.rsplit("/", 1)[-1]
                message = f"{len(trials)} trials ended; best {run_id}: {config.metric} {winner.objective:g}"
            experiment.state, experiment.message = COMPLETED, message
            await self.repo.update(experiment.account, experiment.name, state=COMPLETED, message=message)

    async def _submit(self, experiment: ExperimentRow, trial: TrialRow) -> None:
        template = run_pb2.RunSpec.FromString(experiment.spec)
        config = domain.config_from_json(experiment.config)
        values = {k: _typed(v) for k, v in trial.parameters.items()}
        spec = run_pb2.RunSpec()
        spec.CopyFrom(template)
        spec.display_name = f"{template.display_name}-{trial.trial}"
        spec.command = search.substitute(template.command, values)
        for key, value in template.environment.items():
            spec.environment[key] = search.substitute(value, values)
        spec.environment[domain.PARAMETERS_ENV] = json.dumps(values)
        if config.metric not in spec.evaluation_metrics:
            spec.evaluation_metrics.append(config.metric)
        run = scheduler_pb2.Run(name=trial.run, spec=spec)
        if experiment.code_key:
            run.code.CopyFrom(
                run_pb2.ObjectLocation(bucket=self.gateway.settings.code_bucket, prefix=experiment.code_key)
            )
        try:
            await self.gateway.peers.submissions.submit(run, experiment.tier)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in REFUSALS:
                trial.state, trial.failure_cause = run_pb2.RUN_STATE_FAILED, f"refused: {exc.details()}"
                trial.submitted = True
                await self.repo.save_trial(experiment.account, trial)
                return
            raise
        trial.submitted = True
        await self.repo.save_trial(experiment.account, trial)

    async def _fail(self, experiment: ExperimentRow, trials: list[TrialRow], message: str) -> None:
        experiment.state, experiment.message = FAILED, message
        await self.repo.update(experiment.account, experiment.name, state=FAILED, message=message)
        for trial in trials:
            if trial.state not in TERMINAL_RUN:  # submitted or perhaps submitted: a lost answer
                await self._cancel_run(trial.run, run_pb2.TERMINATION_REASON_USER)

    async def _name_best(
        self, experiment: ExperimentRow, config: domain.ExperimentConfig, trials: list[TrialRow]
    ) -> None:
        best = search.best_trial(config.goal, {t.trial: t.objective for t in trials})
        if best is None:
            return
        winner = next(t for t in trials if t.trial == best)
        if winner.run != experiment.best_run or winner.objective != experiment.best_value:
            experiment.best_run, experiment.best_value = winner.run, winner.objective
            await self.repo.update(
                experiment.account, experiment.name, best_run=winner.run, best_value=winner.objective
            )

    async def _cancel_run(self, run: str, reason: int) -> None:
        try:
            await self.gateway.peers.scheduler.CancelRun(
                scheduler_pb2.CancelRunRequest(name=run, reason=reason),  # type: ignore[arg-type]
                timeout=30,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:  # never submitted: nothing to cancel
                log.warning("cancelling %s: %s", run, exc.code().name)


def _account_of(name: str) -> str:
    """The account of an experiment name that `Experiments.name` resolved for the caller: every query
    of its rows names that account."""
    return name.split("/")[1]


def _run_name(experiment: ExperimentRow, index: int) -> str:
    return names.run_name(experiment.account, f"{experiment.name.rsplit('/', 1)[-1]}-{index}")


def _retry_depth(trial: TrialRow, trials: list[TrialRow]) -> int:
    by_index = {t.trial: t for t in trials}
    depth, current = 0, trial
    while current.retry_of is not None and current.retry_of in by_index:
        depth, current = depth + 1, by_index[current.retry_of]
    return depth


def _typed(text: str) -> search.Value:
    """A rendered parameter value back as a number where it is one (for the JSON file)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return {"true": True, "false": False}.get(text, text)
