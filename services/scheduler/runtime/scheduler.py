"""The scheduler's application layer: run lifecycle, decision rounds, reconciliation, the outbox.

Every transition is persisted before it is acted on. Decision rounds run on events (a run
arrives, capacity frees, a run ends), never on a polling tick. Lifecycle changes are serialized
by one lock: a single scheduler process owns the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import secrets
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dlaas.metering.v1 import metering_pb2
from dlaas.runner.config import RunnerConfig
from dlaas.runner.environment import thread_limits
from dlaas.runner.state import LastWord
from dlaas.scheduler.v1 import scheduler_pb2
from dlaas.types.v1 import run_pb2
from services.common.batching import GroupWriter
from services.common.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from services.common.logs import bound_run
from services.common.telemetry import current_carrier, span_from_carrier
from services.common.timeutil import now_ms
from services.scheduler.adapters.backend import Backend
from services.scheduler.adapters.db import ClusterRepository, RunRepository, RunRow
from services.scheduler.adapters.peers import Peers, runner_access
from services.scheduler.domain.model import (
    ASSIGNED,
    CANCELLED,
    FAILED,
    LIVE,
    QUEUED,
    TERMINAL,
    Allocation,
    LiveRun,
    Node,
    QueuedRun,
    TierLimits,
    Waiting,
    may_advance,
    results_location,
    state_name,
)
from services.scheduler.domain.placement import FitCheck, decide, free_gpu_count, over_allowance
from services.scheduler.runtime.metrics_relay import MetricsRelay
from services.scheduler.settings import SchedulerSettings, Tier

log = logging.getLogger(__name__)
# Metric points of an ended run are taken this long after its end (the runner's last batch).
METRICS_GRACE_MS = 30_000
TRACER = "dlaas.scheduler"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _account_of(name: str) -> str:
    return name.split("/")[1]


def _month_start_ms(now: int) -> int:
    moment = datetime.fromtimestamp(now / 1000, UTC)
    return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp() * 1000)


def _queued(run: RunRow) -> QueuedRun:
    return QueuedRun(
        run.name,
        run.account,
        run.gpus,
        run.gpu_type_wanted,
        run.created_ms,
        run.learners,
        run.priority,
        run.max_runtime_s * 1000,
    )


def _allocations(run: RunRow) -> tuple[Allocation, ...]:
    """Every learner's GPUs: a gang's from `allocations`, a single learner's from node and gpu_indices."""
    if run.allocations:
        return tuple(Allocation(node, gpu_type, tuple(indices)) for node, gpu_type, indices in run.allocations)
    return (Allocation(run.node or "", run.gpu_type or "", tuple(run.gpu_indices)),)


def _held_gpus(run: RunRow) -> int:
    return sum(len(a.gpu_indices) for a in _allocations(run))


def _live(run: RunRow, now: int) -> LiveRun:
    deadline = (run.assigned_ms or now) + run.max_runtime_s * 1000 if run.max_runtime_s else 0
    return LiveRun(run.name, run.account, _allocations(run), deadline)


def _stopped_by_deadline(run: RunRow, state: int, reason: int) -> tuple[int, int]:
    """A run the scheduler stopped at its max runtime ends FAILED (MAX_RUNTIME), not CANCELLED."""
    if state == CANCELLED and run.termination_reason == run_pb2.TERMINATION_REASON_MAX_RUNTIME:
        return FAILED, run_pb2.TERMINATION_REASON_MAX_RUNTIME
    if state == CANCELLED and run.termination_reason == run_pb2.TERMINATION_REASON_EARLY_STOPPED:
        return CANCELLED, run_pb2.TERMINATION_REASON_EARLY_STOPPED  # an experiment stopped it, not the user
    return state, reason


@dataclass(frozen=True)
class Submission:
    """A run to queue, with the tier its caller asked for and the trace its later work continues."""

    run: scheduler_pb2.Run
    tier: str
    trace_carrier: dict[str, str] | None = None


@dataclass(frozen=True)
class _Arrival:
    """A submission waiting to be queued: its row, and its tier's cap on queued runs and monthly GPU-hours."""

    row: RunRow
    max_queued_runs: int
    monthly_gpu_hours: float | None


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        engine: AsyncEngine,
        backend: Backend,
        peers: Peers,
        nodes: list[Node],
        callback_address: str,
    ):
        self.settings = settings
        self.engine = engine
        self.repo = RunRepository(engine)
        self.backend = backend
        self.peers = peers
        self._fits = FitCheck(nodes)  # the nodes, and why a run shape could never fit on them
        self.callback_address = callback_address
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self.cluster = ClusterRepository()
        self._waiting: dict[str, Waiting] = {}
        # Free GPUs after the last round (None: no round yet). While none is free, an arrival that
        # needs GPUs cannot be placed, and wakes no round: the next event that frees GPUs (a run's
        # end, undrain, a node) does, and places it then. Rounds cost O(queue): skipping them is
        # what keeps submissions fast while the cluster is full.
        self._free_gpus: int | None = None
        self._tiers_cache: dict[str, str] = {}
        self._tiers_loaded = False
        self._unseen_arrivals = False
        self._rounds = 0
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._watchers: dict[str, set[asyncio.Queue[None]]] = defaultdict(set)
        self._tasks: set[asyncio.Task[None]] = set()
        self.relay = MetricsRelay()
        self._arrivals: GroupWriter[_Arrival, RunRow] = GroupWriter(self._queue_arrivals)

    @property
    def nodes(self) -> list[Node]:
        return self._fits.nodes

    # ---- API operations -------------------------------------------------------------------

    def _tier(self, name: str) -> Tier:
        """A tier by name; one removed from the settings since falls back to the most restrictive."""
        tiers = self.settings.tiers
        if name in tiers:
            return tiers[name]
        log.warning("tier %r is no longer configured: using the most restrictive one", name)
        return min(tiers.values(), key=lambda t: (t.max_gpus, t.max_runtime_s))

    def _limits(self, tier: Tier) -> TierLimits:
        return TierLimits(tier.max_gpus, tier.weight, frozenset(t.lower() for t in tier.allowed_gpu_types))

    async def submit_many(self, submissions: Sequence[Submission]) -> list[RunRow | BaseException]:
        """Queues runs in one batch of the arrivals' writer. Each gets what a call for it alone
        would answer: its row, the run already held under its name (a retry), or its refusal; a
        failure (a database or metering error) fails the runs it concerns, not the others.
        Their later work continues the trace of their `trace_carrier` (by default, the current one)."""
        tiers = await self._account_tiers()
        checked: list[_Arrival | BaseException] = []
        for submission in submissions:
            with bound_run(submission.run.name, _account_of(submission.run.name)):
                try:
                    checked.append(self._admissible(submission, tiers))
                except Exception as exc:  # noqa: BLE001 - a refusal, or an error of this run alone
                    checked.append(exc)
        await self._check_allowances(checked)
        answers = [c.row if isinstance(c, _Arrival) else c for c in checked]
        refused = {s.run.name for s, c in zip(submissions, checked, strict=True) if isinstance(c, DomainError)}
        if refused:
            # What would refuse a run now (a tier changed, the month's allowance used up since) does
            # not refuse a retry of a run already held: the gateway would forget a live run's spec.
            held: dict[str, RunRow | BaseException]
            try:
                held = dict(await self._held(refused))
            except Exception as exc:  # noqa: BLE001 - held or not is unknown: not a refusal, an error
                held = dict.fromkeys(refused, exc)
            answers = [held.get(s.run.name, a) for s, a in zip(submissions, answers, strict=True)]
        # No lifecycle lock: an arrival only inserts, and the decision round it wakes reads it after commit.
        arrivals = [(i, c) for i, c in enumerate(checked) if isinstance(c, _Arrival)]
        outcomes = await self._arrivals.submit_many([arrival for _, arrival in arrivals])
        for (index, arrival), outcome in zip(arrivals, outcomes, strict=True):
            answers[index] = outcome
            if outcome is arrival.row:  # not a retry of the same submission, nor refused
                arrival.row.transitions = [(QUEUED, arrival.row.created_ms)]
                with bound_run(arrival.row.name, arrival.row.account):
                    log.info("queued %s (%d GPU)", arrival.row.name, arrival.row.gpus)
        return answers

    async def _held(self, names: set[str]) -> dict[str, RunRow]:
        """The runs of these names this scheduler holds."""
        held: dict[str, RunRow] = {}
        async with self.engine.connect() as conn:
            for name in await self.repo.existing(conn, names):
                if (row := await self.repo.get(conn, name)) is not None:
                    held[name] = row
        return held

    def _admissible(self, submission: Submission, tiers: dict[str, str]) -> _Arrival:
        """The arrival to queue for a run, or the refusal of a new run like it (the monthly
        allowance is checked after, once for the whole batch: `_check_allowances`)."""
        run, spec = submission.run, submission.run.spec
        if submission.tier not in self.settings.tiers:
            known = ", ".join(sorted(self.settings.tiers))
            raise InvalidArgument.field("tier", f"unknown tier {submission.tier!r} (known: {known})")
        refusal = self.backend.refusal(spec)
        if refusal is not None:
            raise FailedPrecondition(refusal[0], reason=refusal[1])
        account = _account_of(run.name)
        tier = tiers.get(account, submission.tier)
        limits = self._tier(tier)
        runtime_s = limits.max_runtime_s
        if spec.HasField("max_runtime") and spec.max_runtime.seconds > 0:
            runtime_s = min(runtime_s, spec.max_runtime.seconds)
        row = RunRow(
            name=run.name,
            account=account,
            tier=tier,
            spec=spec.SerializeToString(),
            code=run.code.SerializeToString() if run.HasField("code") else None,
            gpus=spec.resources.gpus,
            gpu_type_wanted=spec.resources.gpu_type,
            state=QUEUED,
            attempt=0,
            created_ms=now_ms(),
            trace_carrier=submission.trace_carrier or current_carrier(),
            learners=max(spec.resources.learners, 1),
            priority=spec.priority,
            max_runtime_s=runtime_s,
        )
        why = self._fits.why_never(_queued(row), self._limits(limits))
        if why:
            raise FailedPrecondition(f"the run can never start: {why}", reason="RUN_NEVER_FITS")
        return _Arrival(row, limits.max_queued_runs, limits.monthly_gpu_hours)

    async def _check_allowances(self, checked: list[_Arrival | BaseException]) -> None:
        """Refuses, in place, the runs with GPUs of accounts whose monthly allowance is used up:
        one look at each account's usage for the whole batch. If the look fails (the database),
        the runs it was for fail with its error."""

        def concerned(c: _Arrival | BaseException) -> _Arrival | None:
            return c if isinstance(c, _Arrival) and c.monthly_gpu_hours is not None and c.row.gpus > 0 else None

        hours: dict[str, float] = {}
        for c in checked:
            if (arrival := concerned(c)) is not None and arrival.monthly_gpu_hours is not None:
                # Runs of one account sent with different tiers (it has none recorded yet): the smaller.
                hours[arrival.row.account] = min(hours.get(arrival.row.account, math.inf), arrival.monthly_gpu_hours)
        if not hours:
            return
        outcome: dict[str, BaseException] = {}
        try:
            live: list[RunRow] = []
            async with self.engine.connect() as conn:
                for account in hours:
                    live += await self.repo.in_states(conn, LIVE, account=account)
            for account, left in (await self._allowance_left(hours, live, now_ms())).items():
                if left <= 0:
                    outcome[account] = FailedPrecondition(
                        f"the tier's {hours[account]:g} GPU-hours for this month are used up; "
                        "runs with GPUs can start again next month, or on another tier",
                        reason="ALLOWANCE_EXHAUSTED",
                    )
        except Exception as exc:  # noqa: BLE001 - the runs it was for fail with it, not the whole call
            outcome = dict.fromkeys(hours, exc)
        for index, c in enumerate(checked):
            if (arrival := concerned(c)) is not None and arrival.row.account in outcome:
                checked[index] = outcome[arrival.row.account]

    async def _queue_arrivals(self, arrivals: Sequence[_Arrival]) -> list[RunRow | BaseException]:
        """Queues a batch of arrivals in one transaction (group commit): each gets its row, the run
        already queued under its name (a retry), or its refusal (the account's queue is full)."""
        for _ in range(3):
            try:
                return await self._queue_batch(arrivals)
            except IntegrityError:
                continue  # a concurrent write (the account's first tier row, set by an admin): look again
        return [Aborted(f"{a.row.name} could not be queued under concurrent submissions; retry it") for a in arrivals]

    async def _queue_batch(self, arrivals: Sequence[_Arrival]) -> list[RunRow | BaseException]:
        outcomes: list[RunRow | BaseException] = []
        async with self.engine.begin() as conn:
            names = {a.row.name for a in arrivals}
            existing = {name: await self.repo.get(conn, name) for name in await self.repo.existing(conn, names)}
            queued = await self.repo.count_queued_by_account(conn, {a.row.account for a in arrivals})
            tiers = await self._account_tiers()
            new: dict[str, RunRow] = {}
            for arrival in arrivals:
                row = arrival.row
                earlier = existing.get(row.name) or new.get(row.name)
                if earlier is not None:
                    outcomes.append(earlier)
                elif queued.get(row.account, 0) >= arrival.max_queued_runs:
                    outcomes.append(
                        ResourceExhausted(
                            f"the account's tier allows {arrival.max_queued_runs} queued runs; wait for some to start",
                            reason="QUEUE_FULL",
                        )
                    )
                else:
                    queued[row.account] = queued.get(row.account, 0) + 1
                    new[row.name] = row
                    outcomes.append(row)
            for account, tier in {r.account: r.tier for r in new.values() if r.account not in tiers}.items():
                await self.cluster.set_tier(conn, account, tier, only_if_new=True)
            await self.repo.insert_many(conn, list(new.values()))
        for row in new.values():
            self._tiers_cache.setdefault(row.account, row.tier)
            # Here, not in `submit`: the rows are committed even if their callers gave up waiting.
            if row.gpus == 0 or self._free_gpus is None or self._free_gpus > 0:
                self._wake.set()
            else:
                self._unseen_arrivals = True
        return outcomes

    async def _account_tiers(self) -> dict[str, str]:
        """Each account's tier. This scheduler is the only writer of the table: read once, then kept."""
        if not self._tiers_loaded:
            async with self.engine.connect() as conn:
                self._tiers_cache.update(await self.cluster.tiers(conn))
            self._tiers_loaded = True
        return self._tiers_cache

    async def set_tier(self, account: str, tier: str) -> Tier:
        if tier not in self.settings.tiers:
            known = ", ".join(sorted(self.settings.tiers))
            raise InvalidArgument.field("tier", f"unknown tier {tier!r} (known: {known})")
        async with self._lock, self.engine.begin() as conn:
            await self.cluster.set_tier(conn, account, tier)
        self._tiers_cache[account] = tier
        log.info("account %s is now on tier %s", account, tier)
        self._wake.set()  # a quota change is a decision event
        return self.settings.tiers[tier]

    async def set_drained(self, name: str, drained: bool) -> Node:
        node = next((n for n in self.nodes if n.name == name), None)
        if node is None:
            raise NotFound(f"node {name} not found")
        async with self._lock, self.engine.begin() as conn:
            await self.cluster.set_drained(conn, name, drained, now_ms())
        log.info("node %s %s", name, "drained" if drained else "undrained")
        self._wake.set()
        return Node(node.name, node.gpu_type, node.gpu_count, not drained)

    async def node_states(self) -> list[tuple[Node, int]]:
        """Each node (schedulable or drained) with the GPUs in use on it."""
        async with self.engine.connect() as conn:
            drained = await self.cluster.drained(conn)
            live = await self.repo.in_states(conn, LIVE)
        used: dict[str, int] = defaultdict(int)
        for run in live:
            for allocation in _allocations(run):
                used[allocation.node] += len(allocation.gpu_indices)
        return [(Node(n.name, n.gpu_type, n.gpu_count, n.name not in drained), used[n.name]) for n in self.nodes]

    async def queue(self, account: str | None) -> list[tuple[RunRow, Waiting]]:
        if self._unseen_arrivals:  # positions and reasons of runs no round has seen yet
            target = self._rounds + 1
            self._wake.set()
            for _ in range(500):
                if self._rounds >= target:
                    break
                await asyncio.sleep(0.01)
        async with self.engine.connect() as conn:
            queued = await self.repo.in_states(conn, {QUEUED}, account=account)  # one account's, in the query
        entries = [
            (run, self._waiting.get(run.name, Waiting(0, "waiting for the next decision round"))) for run in queued
        ]
        entries.sort(key=lambda e: (e[0].account, e[1].position or 1 << 30, e[0].created_ms))
        return entries

    async def get(self, name: str) -> RunRow:
        async with self.engine.connect() as conn:
            run = await self.repo.get(conn, name, account=_account_of(name))  # scoped in the query itself
        if run is None:
            raise NotFound(f"run {name} not found")
        return run

    async def list_runs(self, account: str, offset: int, limit: int) -> tuple[list[RunRow], int]:
        async with self.engine.connect() as conn:
            runs = await self.repo.list_for_account(conn, account, offset, limit)
            total = await self.repo.count_for_account(conn, account)
        return runs, total

    def waiting(self, name: str) -> Waiting:
        unseen = "capacity: every GPU is in use" if self._unseen_arrivals and self._free_gpus == 0 else ""
        return self._waiting.get(name, Waiting(0, unseen))

    async def cancel(self, name: str, reason: int) -> RunRow:
        reason = reason or run_pb2.TERMINATION_REASON_USER
        async with self._lock:
            async with self.engine.begin() as conn:
                run = await self.repo.get(conn, name, account=_account_of(name))
                if run is None:
                    raise NotFound(f"run {name} not found")
                if run.state in TERMINAL:
                    return run
                run.cancel_requested = True
                if run.state == QUEUED:
                    await self._finish(conn, run, CANCELLED, reason, now_ms(), message="cancelled while queued")
                elif not self.backend.cancel(run.name, run.attempt):
                    # No runner to ask: it was not started yet, or it is gone.
                    await self._finish(
                        conn, run, CANCELLED, reason, now_ms(), message="cancelled before the runner ran"
                    )
                else:
                    run.termination_reason = reason
                    await self.repo.save(conn, run)
            self._after_change(run)
        return run

    async def report(self, request: scheduler_pb2.ReportRunProgressRequest) -> bool:
        """Applies a runner's report; returns whether the runner should stop."""
        async with self._lock:
            async with self.engine.begin() as conn:
                run = await self.repo.get(conn, request.name, account=_account_of(request.name))
                if run is None:
                    raise NotFound(f"run {request.name} not found")
                if not run.run_token_hash or not hmac.compare_digest(
                    run.run_token_hash, _hash_token(request.run_token)
                ):
                    raise PermissionDenied("the run token is not valid for this run", reason="RUN_TOKEN_INVALID")
                if request.attempt != run.attempt:
                    raise FailedPrecondition(f"attempt {request.attempt} is not the run's current attempt")
                if run.state in TERMINAL:
                    if request.state == run.state:
                        return run.cancel_requested  # a retried final report
                    raise FailedPrecondition(f"the run already ended {state_name(run.state)}")
                if not may_advance(run.state, request.state):
                    return run.cancel_requested  # a resent report of a state already passed
                time_ms = self._clamp(run, request.event_time if request.HasField("event_time") else None)
                if request.state in TERMINAL:
                    state, reason = _stopped_by_deadline(run, request.state, request.termination_reason)
                    await self._finish(
                        conn,
                        run,
                        state,
                        reason,
                        time_ms,
                        exit_code=request.exit_code if request.HasField("exit_code") else None,
                        message=request.message,
                        log_tail=list(request.log_tail),
                    )
                else:
                    await self._enter(conn, run, request.state, time_ms)
                    await self.repo.save(conn, run)
            self._after_change(run)
            log.info("%s is %s", run.name, state_name(run.state))
            return run.cancel_requested

    async def relay_metrics(self, request: scheduler_pb2.ReportRunMetricsRequest) -> bool:
        """Passes a runner's metric points on to the relay; returns whether the runner should stop."""
        async with self.engine.connect() as conn:
            run = await self.repo.get(conn, request.name, account=_account_of(request.name))
        if run is None:
            raise NotFound(f"run {request.name} not found")
        if not run.run_token_hash or not hmac.compare_digest(run.run_token_hash, _hash_token(request.run_token)):
            raise PermissionDenied("the run token is not valid for this run", reason="RUN_TOKEN_INVALID")
        if request.attempt != run.attempt:
            raise FailedPrecondition(f"attempt {request.attempt} is not the run's current attempt")
        # The token dies with the run; its last batch may trail the final report by a moment.
        if run.state in TERMINAL and run.transitions and now_ms() - run.transitions[-1][1] > METRICS_GRACE_MS:
            raise FailedPrecondition(f"the run already ended {state_name(run.state)}")
        await self.relay.publish(run.name, run.attempt, list(request.points))
        return run.cancel_requested

    async def watch(self, name: str) -> AsyncIterator[RunRow]:
        queue: asyncio.Queue[None] = asyncio.Queue()
        self._watchers[name].add(queue)
        try:
            run = await self.get(name)
            yield run
            while run.state not in TERMINAL:
                await queue.get()
                while not queue.empty():
                    queue.get_nowait()
                run = await self.get(name)
                yield run
        finally:
            self._watchers[name].discard(queue)
            if not self._watchers[name]:
                self._watchers.pop(name, None)

    async def logs(self, name: str, follow: bool) -> AsyncIterator[bytes]:
        run = await self.get(name)
        if run.attempt == 0:
            if not follow:
                return
            async for run in self.watch(name):
                if run.attempt > 0 or run.state in TERMINAL:
                    break
            if run.attempt == 0:
                return
        attempt = run.attempt

        async def is_live() -> bool:
            current = await self.get(name)
            return current.attempt == attempt and current.state not in TERMINAL

        async for chunk in self.backend.read_log(name, attempt, follow, is_live):
            yield chunk

    # ---- transitions -------------------------------------------------------------------------

    def _clamp(self, run: RunRow, reported: Timestamp | None) -> int:
        """The runner's clock, kept between the run's last recorded transition and now."""
        now = now_ms()
        last = run.transitions[-1][1] if run.transitions else now
        if reported is None:
            return now
        return min(now, max(last, reported.ToMilliseconds()))

    async def _enter(self, conn: AsyncConnection, run: RunRow, state: int, time_ms: int) -> None:
        run.state = state
        run.transitions.append((state, time_ms))
        await self.repo.add_transition(conn, run.name, run.attempt, state, time_ms)

    async def _finish(
        self,
        conn: AsyncConnection,
        run: RunRow,
        state: int,
        reason: int,
        time_ms: int,
        *,
        exit_code: int | None = None,
        message: str = "",
        log_tail: list[str] | None = None,
    ) -> None:
        """Ends the run; closes its usage interval in the same transaction when one is open."""
        held_gpus = run.state in LIVE
        await self._enter(conn, run, state, time_ms)
        run.termination_reason = reason
        run.exit_code = exit_code
        run.message = message
        run.log_tail = log_tail or []
        await self.repo.save(conn, run)
        if held_gpus:
            await self._add_usage_event(conn, run, metering_pb2.USAGE_EVENT_KIND_CLOSE, time_ms)

    async def _add_usage_event(self, conn: AsyncConnection, run: RunRow, kind: int, time_ms: int) -> None:
        kind_name = "open" if kind == metering_pb2.USAGE_EVENT_KIND_OPEN else "close"
        event = metering_pb2.UsageEvent(
            event_id=f"{run.name}/attempts/{run.attempt}/{kind_name}",
            account=f"accounts/{run.account}",
            run=run.name,
            attempt=run.attempt,
            kind=kind,  # type: ignore[arg-type]
            gpus=run.gpus * max(run.learners, 1),  # a gang is billed for every learner's GPUs
            gpu_type=run.gpu_type or "",
            node=run.node or "",
        )
        event.event_time.FromMilliseconds(time_ms)
        await self.repo.add_event(conn, event.event_id, event.SerializeToString(), run.trace_carrier, now_ms())

    def _after_change(self, run: RunRow) -> None:
        for queue in self._watchers.get(run.name, ()):
            queue.put_nowait(None)
        if run.state in TERMINAL:
            self._wake.set()
            self._outbox_wake.set()
            if run.grant_name:
                self._spawn(self._revoke(run.grant_name, run.name))

    async def _revoke(self, grant_name: str, ended_run: str = "") -> None:
        """Revokes a grant, trying again until storage answers. An ended run keeps its grant's name
        until the revocation is done, so that `reconcile` finishes it after a crash."""
        backoff = 0.5
        while True:
            try:
                await self.peers.revoke(grant_name)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    break
                log.warning("could not revoke grant %s (%s); trying again", grant_name, exc.code().name)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        if ended_run:
            async with self.engine.begin() as conn:
                await self.repo.clear_grant(conn, ended_run, grant_name, TERMINAL)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- decision rounds -------------------------------------------------------------------

    def _nodes_changed(self, nodes: list[Node]) -> None:
        """The backend's nodes changed (added, lost, cordoned): the next round places on these."""
        self._fits = FitCheck(nodes)
        self._wake.set()

    async def dispatch_loop(self) -> None:
        self.backend.warm()
        self.backend.watch_nodes(self._nodes_changed)
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._round()
            except Exception:
                log.exception("decision round failed; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _round(self) -> None:
        try:
            await self._decide_round()
        finally:
            self._rounds += 1

    async def _decide_round(self) -> None:
        launches: list[tuple[RunRow, str]] = []
        self._unseen_arrivals = False
        # Metering is asked before the lock is taken: a slow answer must not hold up reports and cancels.
        account_tiers = await self._account_tiers()
        async with self.engine.connect() as conn:
            waiting_accounts = await self.repo.queued_accounts(conn)
        closed = await self._closed_usage(
            a for a, t in waiting_accounts.items() if self._tier(account_tiers.get(a, t)).monthly_gpu_hours is not None
        )
        async with self._lock:
            async with self.engine.connect() as conn:
                queued = await self.repo.in_states(conn, {QUEUED})
                live = await self.repo.in_states(conn, LIVE)
                drained = await self.cluster.drained(conn)
            nodes = [Node(n.name, n.gpu_type, n.gpu_count, n.name not in drained) for n in self.nodes]
            if not queued:
                self._waiting = {}
                self._free_gpus = None  # nothing waits: the next arrival decides at once
                return
            limits = {
                r.account: self._limits(self._tier(account_tiers.get(r.account, r.tier))) for r in [*queued, *live]
            }
            now = now_ms()
            candidates = [_queued(r) for r in queued]
            hours = {
                r.account: tier.monthly_gpu_hours
                for r in queued
                if (tier := self._tier(account_tiers.get(r.account, r.tier))).monthly_gpu_hours is not None
            }
            remaining: dict[str, int] = {}
            for account, allowance in hours.items():
                if account not in closed:
                    remaining[account] = 0  # arrived since metering was asked: decided next round
                    self._wake.set()
                elif (used := closed[account]) is not None:
                    remaining[account] = self._left(allowance, used, live, account, now)
            running = [_live(r, now) for r in live]
            decisions = decide(
                candidates,
                running,
                nodes,
                limits,
                now_ms=now,
                held=over_allowance(candidates, remaining, hours),
            )
            self._waiting = decisions.waiting
            self._free_gpus = free_gpu_count(
                nodes, [*(r.allocations for r in running), *(a.allocations for a in decisions.assignments)]
            )
            by_name = {r.name: r for r in queued}
            async with self.engine.begin() as conn:
                for assignment in decisions.assignments:
                    run = by_name[assignment.run]
                    run.transitions = await self.repo.transitions(conn, run.name)
                    token = secrets.token_urlsafe(32)
                    allocation = assignment.allocations[0]  # a gang's first learner; all are kept below
                    run.attempt += 1
                    run.node, run.gpu_type = allocation.node, allocation.gpu_type
                    run.gpu_indices = list(allocation.gpu_indices)
                    if len(assignment.allocations) > 1:
                        run.allocations = [(a.node, a.gpu_type, list(a.gpu_indices)) for a in assignment.allocations]
                    run.run_token_hash = _hash_token(token)
                    time_ms = now_ms()
                    run.assigned_ms = time_ms
                    await self._enter(conn, run, ASSIGNED, time_ms)
                    await self.repo.save(conn, run)
                    await self._add_usage_event(conn, run, metering_pb2.USAGE_EVENT_KIND_OPEN, time_ms)
                    launches.append((run, token))
        if launches:
            self._outbox_wake.set()
        for run, token in launches:
            self._after_change(run)
            self._arm_deadline(run)
            with bound_run(run.name):
                log.info("assigned %s to %s GPUs %s", run.name, run.node, run.gpu_indices)
            self._spawn(self._launch(run, token))

    async def _closed_usage(self, accounts: Iterable[str]) -> dict[str, int | None]:
        """This month's GPU-milliseconds of each account's closed intervals, from metering (None: no
        answer). The accounts are asked at once: a metering that does not answer costs one timeout."""

        async def closed(account: str) -> int | None:
            try:
                return (await self.peers.monthly_usage(account)).closed_gpu_milliseconds
            except grpc.aio.AioRpcError as exc:
                log.warning("metering did not answer (%s): %s's allowance not checked", exc.code().name, account)
                return None

        asked = list(accounts)
        return dict(zip(asked, await asyncio.gather(*(closed(a) for a in asked)), strict=True))

    @staticmethod
    def _left(hours: float, closed: int, live: list[RunRow], account: str, now: int) -> int:
        """What the allowance leaves: the account's running runs are counted from the scheduler's records."""
        month_start = _month_start_ms(now)
        running = sum(
            _held_gpus(r) * (now - max(r.assigned_ms or now, month_start)) for r in live if r.account == account
        )
        return int(hours * 3_600_000) - closed - running

    async def _allowance_left(self, hours: dict[str, float], live: list[RunRow], now: int) -> dict[str, int]:
        """GPU-milliseconds each account with a monthly allowance has left this month (unknown: absent)."""
        closed = await self._closed_usage(hours)
        return {
            account: self._left(h, used, live, account, now)
            for account, h in hours.items()
            if (used := closed[account]) is not None
        }

    # ---- max runtime ---------------------------------------------------------------------

    def _arm_deadline(self, run: RunRow) -> None:
        """Stops the attempt if it outlives its max runtime (plus grace): the runner's own limit is first."""
        if not run.max_runtime_s or run.assigned_ms is None:
            return
        due_ms = run.assigned_ms + (run.max_runtime_s + self.settings.max_runtime_grace_s) * 1000
        delay = max(0.0, (due_ms - now_ms()) / 1000)
        loop = asyncio.get_running_loop()
        key = f"{run.name}#{run.attempt}"
        self._deadlines[key] = loop.call_later(
            delay, lambda: self._spawn(self._enforce_deadline(run.name, run.attempt))
        )

    async def _enforce_deadline(self, name: str, attempt: int) -> None:
        self._deadlines.pop(f"{name}#{attempt}", None)
        async with self._lock:
            async with self.engine.begin() as conn:
                run = await self.repo.get(conn, name)
                if run is None or run.attempt != attempt or run.state not in LIVE:
                    return
                log.warning("%s outlived its max runtime of %d s: stopping it", name, run.max_runtime_s)
                run.cancel_requested = True
                run.termination_reason = run_pb2.TERMINATION_REASON_MAX_RUNTIME
                if self.backend.cancel(run.name, run.attempt):
                    await self.repo.save(conn, run)
                    # If it does not stop within the grace either, it is killed; its watcher ends the run.
                    loop = asyncio.get_running_loop()
                    loop.call_later(max(self.settings.max_runtime_grace_s, 5), self.backend.kill_runner, name, attempt)
                else:
                    message = f"exceeded its max runtime of {run.max_runtime_s} s"
                    await self._finish(
                        conn, run, FAILED, run_pb2.TERMINATION_REASON_MAX_RUNTIME, now_ms(), message=message
                    )
            self._after_change(run)

    async def _launch(self, run: RunRow, token: str) -> None:
        """Gets the run's grant and starts its runner; a failure ends the run (infrastructure)."""
        with bound_run(run.name), span_from_carrier(TRACER, "launch run", run.trace_carrier):
            try:
                launch, grant_name = await self._prepare_launch(run, token)
            except grpc.aio.AioRpcError as exc:
                await self._fail_attempt(run, f"could not get a storage grant: {exc.details()}")
                return
            except Exception as exc:
                log.exception("could not prepare the launch")
                await self._fail_attempt(run, f"could not prepare the runner: {exc.__class__.__name__}")
                return
            async with self._lock:
                async with self.engine.begin() as conn:
                    current = await self.repo.get(conn, run.name)
                    if current is None or current.attempt != run.attempt or current.state != ASSIGNED:
                        self._spawn(self._revoke(grant_name))
                        return
                    current.grant_name = grant_name
                    await self.repo.save(conn, current)
                try:
                    await self.backend.start(launch, _allocations(current), run_pb2.RunSpec.FromString(current.spec))
                except Exception as exc:
                    log.exception("could not start the runner")
                    self._spawn(self._fail_attempt(run, f"could not start the runner: {exc.__class__.__name__}"))
                    return
            self._spawn(self._watch_runner(run.name, run.attempt))

    async def _prepare_launch(self, run: RunRow, token: str) -> tuple[RunnerConfig, str]:
        spec = run_pb2.RunSpec.FromString(run.spec)
        run_id = run.name.rsplit("/", 1)[-1]
        results = results_location(spec, run_id)
        reads: list[run_pb2.ObjectLocation] = []
        if spec.training_data.bucket:
            reads.append(spec.training_data)
        if run.code:
            reads.append(run_pb2.ObjectLocation.FromString(run.code))
        max_runtime_s = run.max_runtime_s or self._tier(run.tier).max_runtime_s  # fixed at submission
        grant = await self.peers.grant_run(
            run.account,
            run.name,
            run.attempt,
            reads,
            results,
            max_runtime_s + self.settings.grant_margin_s,
            run_token_sha256=_hash_token(token),  # the runner renews its grant with its token
        )
        # Each access is a local path, S3 credentials or presigned URLs; runner.json carries any, per input.
        data_path, data_s3 = runner_access(grant.accesses[0]) if spec.training_data.bucket else (None, None)
        code_path, code_s3 = runner_access(grant.accesses[len(reads) - 1]) if run.code else (None, None)
        results_path, results_s3 = runner_access(grant.accesses[-1])
        envs = self.settings.framework_envs
        framework = spec.framework
        python_bin_dir = (
            envs.get(f"{framework.name}:{framework.version}")
            or envs.get(framework.name)
            or str(Path(sys.executable).parent)
        )
        launch = RunnerConfig(
            run=run.name,
            run_id=run_id,
            attempt=run.attempt,
            run_token=token,
            scheduler_address=self.callback_address,
            command=spec.command,
            python_bin_dir=python_bin_dir,
            gpu_indices=tuple(run.gpu_indices),
            num_learners=max(1, spec.resources.learners),
            # The run's own environment wins over the thread limits its CPUs imply.
            environment=thread_limits(spec.resources.cpus) | dict(spec.environment),
            job_dir=self.backend.job_dir(run.name, run.attempt),
            code_archive_path=code_path,
            data_path=data_path,
            results_path=results_path,
            max_runtime_s=max_runtime_s,
            trace_carrier=current_carrier(),
            code_s3=code_s3,
            data_s3=data_s3,
            results_s3=results_s3,
            grant=grant.name,
            storage_address=self.settings.runner_storage_address or self.settings.storage_address,
        )
        return launch, grant.name

    async def _fail_attempt(self, run: RunRow, message: str, final: LastWord | None = None) -> None:
        """Ends a live attempt whose runner is gone: with the runner's own last word if it left one."""
        async with self._lock:
            async with self.engine.begin() as conn:
                current = await self.repo.get(conn, run.name)
                if current is None or current.attempt != run.attempt or current.state not in LIVE:
                    return
                # The runner is gone; its command must not go on beside a next attempt.
                self.backend.kill_command(current.name, current.attempt)
                state: int = FAILED
                reason: int = run_pb2.TERMINATION_REASON_INFRASTRUCTURE
                exit_code: int | None = None
                log_tail: list[str] = []
                if final is not None and final.progress.terminal:
                    word = final.progress
                    state, reason, message = word.state, word.termination_reason, word.message
                    exit_code, log_tail = word.exit_code, list(word.log_tail)
                elif current.cancel_requested:
                    state, reason = CANCELLED, current.termination_reason or run_pb2.TERMINATION_REASON_USER
                elif current.attempt < self.settings.max_attempts:
                    await self._requeue(conn, current, now_ms(), f"attempt {current.attempt} lost: {message}")
                    self._after_change(current)
                    self._wake.set()
                    log.warning("%s: attempt %d lost (%s); queued again", run.name, run.attempt, message)
                    return
                else:
                    message = f"{message} (attempt {current.attempt} of {self.settings.max_attempts})"
                state, reason = _stopped_by_deadline(current, state, reason)
                await self._finish(
                    conn, current, state, reason, now_ms(), exit_code=exit_code, message=message, log_tail=log_tail
                )
            self._after_change(current)
            log.warning("%s ended %s: %s", run.name, state_name(current.state), message)

    async def _requeue(self, conn: AsyncConnection, run: RunRow, time_ms: int, message: str) -> None:
        """Puts a lost attempt's run back in the queue; the lost attempt's usage closes now."""
        await self._add_usage_event(conn, run, metering_pb2.USAGE_EVENT_KIND_CLOSE, time_ms)
        grant = run.grant_name
        run.state = QUEUED
        run.transitions.append((QUEUED, time_ms))
        await self.repo.add_transition(conn, run.name, run.attempt + 1, QUEUED, time_ms)
        run.node = run.gpu_type = run.run_token_hash = run.grant_name = None
        run.gpu_indices = []
        run.allocations = []
        run.assigned_ms = None
        run.message = message
        await self.repo.save(conn, run)
        self._outbox_wake.set()
        if grant:
            self._spawn(self._revoke(grant))

    async def _watch_runner(self, name: str, attempt: int) -> None:
        await self.backend.wait(name, attempt)
        run = await self.get(name)
        if run.attempt == attempt and run.state in LIVE:
            final = self.backend.final_state(name, attempt)
            await self._fail_attempt(run, "the runner exited without reporting an end state", final)

    # ---- start-up ------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Adopts live runners, ends attempts whose runner is gone, relaunches unstarted ones, and
        finishes the revocation of ended runs' grants."""
        await self.backend.sync()
        async with self.engine.connect() as conn:
            live = await self.repo.in_states(conn, LIVE)
            for name, grant_name in await self.repo.ended_with_grants(conn, TERMINAL):
                self._spawn(self._revoke(grant_name, name))
        for run in live:
            with bound_run(run.name):
                if self.backend.is_alive(run.name, run.attempt):
                    log.info("adopted the running runner of %s", run.name)
                    self._arm_deadline(run)
                    self._spawn(self._watch_runner(run.name, run.attempt))
                elif run.state == ASSIGNED and not self.backend.started(run.name, run.attempt):
                    token = secrets.token_urlsafe(32)
                    async with self._lock, self.engine.begin() as conn:
                        current = await self.repo.get(conn, run.name)
                        if current is None or current.attempt != run.attempt or current.state != ASSIGNED:
                            continue  # changed meanwhile (cancelled, reported)
                        current.run_token_hash = _hash_token(token)
                        await self.repo.save(conn, current)
                    log.info("relaunching %s, assigned but never started", run.name)
                    self._arm_deadline(current)
                    self._spawn(self._launch(current, token))
                else:
                    final = self.backend.final_state(run.name, run.attempt)
                    await self._fail_attempt(run, "the runner ended while the scheduler was down", final)

    # ---- outbox --------------------------------------------------------------------------

    async def outbox_loop(self) -> None:
        backoff = 0.2
        while True:
            self._outbox_wake.clear()
            try:
                async with self.engine.connect() as conn:
                    pending = await self.repo.pending_events(conn, 100)
                if not pending:
                    await self._outbox_wake.wait()
                    continue
                for event_id, payload, carrier in pending:
                    with span_from_carrier(TRACER, "deliver usage event", carrier):
                        await self.peers.record([metering_pb2.UsageEvent.FromString(payload)])
                    async with self.engine.begin() as conn:
                        await self.repo.mark_delivered(conn, [event_id], now_ms())
                backoff = 0.2
            except Exception as exc:
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.warning("metering unreachable (%s); retrying in %.1f s", exc.code().name, backoff)
                else:
                    log.exception("usage delivery failed; retrying in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def close(self) -> None:
        await self.backend.close()
        for handle in self._deadlines.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
