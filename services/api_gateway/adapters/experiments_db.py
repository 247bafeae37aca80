"""The gateway's experiment, trial and metric tables (same metadata and Alembic history as db.py).

Every read and write of an experiment or its trials names the account in its query: experiments by
their `account` column, trials through their experiment's row (`_owned_by`). Metric points are
keyed by the run's full name, `accounts/{account}/runs/{run}`, which holds the account.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.api_gateway.adapters.db import metadata

experiments = Table(
    "gateway_experiments",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("account", String(64), nullable=False),
    Column("request_id", String(200), nullable=True),
    Column("display_name", String(200), nullable=False),
    Column("manifest", Text, nullable=False),  # as submitted, minus inline credentials
    Column("spec", LargeBinary, nullable=False),  # dlaas.types.v1.RunSpec with ${...} unsubstituted
    Column("code_key", String(300), nullable=True),
    Column("config", Text, nullable=False),  # ExperimentConfig as JSON
    Column("tier", String(64), nullable=False),
    Column("max_runs", Integer, nullable=False),
    Column("extensions", Integer, nullable=False),
    Column("extend_request_id", String(200), nullable=True),  # the last ExtendExperiment's, for its retries
    Column("state", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("best_run", String(200), nullable=True),
    Column("best_value", Float, nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("account", "request_id", name="uq_gateway_experiments_request"),
)
Index("ix_gateway_experiments_account", experiments.c.account, experiments.c.created_ms)
Index("ix_gateway_experiments_state", experiments.c.state)

trials = Table(
    "gateway_trials",
    metadata,
    Column("experiment", String(200), primary_key=True),
    Column("trial", Integer, primary_key=True),
    Column("run", String(200), nullable=False, unique=True),
    Column("parameters", Text, nullable=False),  # name → rendered value, JSON
    Column("extension", Integer, nullable=False),
    Column("retry_of", Integer, nullable=True),
    Column("submitted", Boolean, nullable=False),
    Column("state", Integer, nullable=False),  # the run's state as last seen
    Column("termination_reason", Integer, nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("objective", Float, nullable=True),
    Column("objective_step", BigInteger, nullable=False),
    Column("latest", Text, nullable=False),  # metric → last value, JSON
    Column("rungs", Text, nullable=False),  # ASHA rung step → objective there, JSON
    Column("stop_requested", Boolean, nullable=False),
    Column("failure_cause", Text, nullable=False),
    Column("running_ms", BigInteger, nullable=True),
    Column("ended_ms", BigInteger, nullable=True),
)

metric_points = Table(
    "gateway_metric_points",
    metadata,
    Column("run", String(200), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("metric", String(128), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=True),  # NULL stands for NaN (SQLite cannot hold NaN)
    Column("time_ms", BigInteger, nullable=False),
)


@dataclass
class ExperimentRow:
    name: str
    account: str
    request_id: str | None
    display_name: str
    manifest: str
    spec: bytes
    code_key: str | None
    config: str
    tier: str
    max_runs: int
    extensions: int
    extend_request_id: str | None
    state: int
    message: str
    best_run: str | None
    best_value: float | None
    created_ms: int


@dataclass
class TrialRow:
    experiment: str
    trial: int
    run: str
    parameters: dict[str, str]
    extension: int
    retry_of: int | None
    submitted: bool = False
    state: int = 0
    termination_reason: int = 0
    exit_code: int | None = None
    objective: float | None = None
    objective_step: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    rungs: dict[int, float] = field(default_factory=dict)
    stop_requested: bool = False
    failure_cause: str = ""
    running_ms: int | None = None
    ended_ms: int | None = None

    def values(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "trial": self.trial,
            "run": self.run,
            "parameters": json.dumps(self.parameters),
            "extension": self.extension,
            "retry_of": self.retry_of,
            "submitted": self.submitted,
            "state": self.state,
            "termination_reason": self.termination_reason,
            "exit_code": self.exit_code,
            "objective": _stored(self.objective),
            "objective_step": self.objective_step,
            "latest": json.dumps({k: _json_number(v) for k, v in self.latest.items()}),
            "rungs": json.dumps({str(k): _json_number(v) for k, v in self.rungs.items()}),
            "stop_requested": self.stop_requested,
            "failure_cause": self.failure_cause,
            "running_ms": self.running_ms,
            "ended_ms": self.ended_ms,
        }


@dataclass(frozen=True)
class StoredPoint:
    attempt: int
    sequence: int
    metric: str
    step: int
    value: float
    time_ms: int


def _stored(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _json_number(value: float) -> float | str:
    return "NaN" if math.isnan(value) else value


def _trial(row: Any) -> TrialRow:
    return TrialRow(
        experiment=row.experiment,
        trial=row.trial,
        run=row.run,
        parameters=json.loads(row.parameters),
        extension=row.extension,
        retry_of=row.retry_of,
        submitted=row.submitted,
        state=row.state,
        termination_reason=row.termination_reason,
        exit_code=row.exit_code,
        objective=row.objective,
        objective_step=row.objective_step,
        latest={k: float(v) for k, v in json.loads(row.latest).items()},
        rungs={int(k): float(v) for k, v in json.loads(row.rungs).items()},
        stop_requested=row.stop_requested,
        failure_cause=row.failure_cause,
        running_ms=row.running_ms,
        ended_ms=row.ended_ms,
    )


def _experiment(row: Any) -> ExperimentRow:
    return ExperimentRow(**{c.name: getattr(row, c.name) for c in experiments.columns})


class ExperimentRepository:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def add(self, row: ExperimentRow) -> bool:
        """Stores the experiment; False when the same request_id got there first."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(experiments).values(**row.__dict__))
        except IntegrityError:
            return False
        return True

    async def by_request(self, account: str, request_id: str) -> ExperimentRow | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(experiments).where(experiments.c.account == account, experiments.c.request_id == request_id)
                )
            ).first()
        return _experiment(row) if row else None

    async def get(self, account: str, name: str) -> ExperimentRow | None:
        query = select(experiments).where(experiments.c.account == account, experiments.c.name == name)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _experiment(row) if row else None

    async def list_for_account(self, account: str, offset: int, limit: int) -> tuple[list[ExperimentRow], int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(experiments)
                .where(experiments.c.account == account)
                .order_by(experiments.c.created_ms.desc(), experiments.c.name)
                .offset(offset)
                .limit(limit)
            )
            total = (
                await conn.execute(
                    select(func.count()).select_from(experiments).where(experiments.c.account == account)
                )
            ).scalar_one()
        return [_experiment(r) for r in rows], int(total)

    async def in_state(self, state: int) -> list[ExperimentRow]:
        """Every account's experiments in `state`: for the controller, which acts on each as its account."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(experiments).where(experiments.c.state == state))
        return [_experiment(r) for r in rows]

    async def update(self, account: str, name: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(experiments).where(experiments.c.account == account, experiments.c.name == name).values(**values)
            )

    async def trials(self, account: str, experiment: str) -> list[TrialRow]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(trials).where(trials.c.experiment == experiment, _owned_by(account)).order_by(trials.c.trial)
            )
        return [_trial(r) for r in rows]

    async def trial_counts(self, account: str, names: Sequence[str]) -> dict[str, int]:
        if not names:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(trials.c.experiment, func.count())
                .where(trials.c.experiment.in_(list(names)), _owned_by(account))
                .group_by(trials.c.experiment)
            )
        return {r[0]: int(r[1]) for r in rows}

    async def add_trial(self, account: str, trial: TrialRow) -> bool:
        """Stores a trial of the account's experiment; False (nothing stored) when it is not the account's."""
        async with self.engine.begin() as conn:
            owner = select(experiments.c.name).where(
                experiments.c.account == account, experiments.c.name == trial.experiment
            )
            if (await conn.execute(owner)).first() is None:
                return False
            await conn.execute(insert(trials).values(**trial.values()))
        return True

    async def save_trial(self, account: str, trial: TrialRow) -> None:
        values = trial.values()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(trials)
                .where(trials.c.experiment == trial.experiment, trials.c.trial == trial.trial, _owned_by(account))
                .values(**values)
            )


def _owned_by(account: str) -> Any:
    """Trials rows hold their experiment's name; this ties them to the experiment's account in the query."""
    return exists().where(experiments.c.name == trials.c.experiment, experiments.c.account == account)


class MetricRepository:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def add(self, run: str, attempt: int, points: Iterable[tuple[int, str, int, float, int]]) -> int:
        """Stores (sequence, metric, step, value, time_ms) points; a point stored before is skipped.
        Returns how many were new."""
        rows = [
            {
                "run": run,
                "attempt": attempt,
                "sequence": seq,
                "metric": metric[:128],
                "step": step,
                "value": _stored(value),
                "time_ms": time_ms,
            }
            for seq, metric, step, value, time_ms in points
        ]
        if not rows:
            return 0
        async with self.engine.begin() as conn:
            statement = _insert_ignoring_duplicates(conn, rows)
            result = await conn.execute(statement)
        return max(0, result.rowcount or 0)

    async def points(
        self,
        run: str,
        *,
        after: tuple[int, int] = (0, 0),
        metrics: Sequence[str] = (),
        limit: int = 10_000,
    ) -> list[StoredPoint]:
        """Points of the run after (attempt, sequence), in that order."""
        key = tuple_(metric_points.c.attempt, metric_points.c.sequence)
        query = select(metric_points).where(metric_points.c.run == run)
        query = query.where(
            or_(
                metric_points.c.attempt > after[0],
                and_(metric_points.c.attempt == after[0], metric_points.c.sequence > after[1]),
            )
        )
        if metrics:
            query = query.where(metric_points.c.metric.in_(list(metrics)))
        async with self.engine.connect() as conn:
            rows = await conn.execute(query.order_by(*key.clauses).limit(limit))
        return [
            StoredPoint(
                r.attempt, r.sequence, r.metric, r.step, float("nan") if r.value is None else r.value, r.time_ms
            )
            for r in rows
        ]


def _insert_ignoring_duplicates(conn: AsyncConnection, rows: list[dict[str, Any]]) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(metric_points).values(rows).on_conflict_do_nothing()
    return sqlite.insert(metric_points).values(rows).on_conflict_do_nothing()
