"""The scheduler's tables and the repository over them. The database is the truth for run state."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

metadata = MetaData()
QUEUED_STATE = 1  # dlaas.types.v1.RUN_STATE_QUEUED

runs = Table(
    "scheduler_runs",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("account", String(64), nullable=False, index=True),
    Column("tier", String(64), nullable=False),
    Column("spec", LargeBinary, nullable=False),  # dlaas.types.v1.RunSpec
    Column("code", LargeBinary, nullable=True),  # dlaas.types.v1.ObjectLocation
    Column("gpus", Integer, nullable=False),
    Column("gpu_type_wanted", String(64), nullable=False, default=""),
    Column("learners", Integer, nullable=False, default=1),
    Column("priority", Integer, nullable=False, default=0),
    Column("max_runtime_s", Integer, nullable=False, default=0),
    Column("assigned_ms", BigInteger, nullable=True),
    Column("state", Integer, nullable=False, index=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    Column("node", String(200), nullable=True),
    Column("gpu_type", String(64), nullable=True),
    Column("gpu_indices", Text, nullable=True),  # JSON list
    # Every learner's [node, gpu_type, [indices]] (JSON); a gang has several, node/gpu_indices are the first's.
    Column("allocations", Text, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("termination_reason", Integer, nullable=False, default=0),
    Column("message", Text, nullable=False, default=""),
    Column("log_tail", Text, nullable=False, default="[]"),
    Column("run_token_hash", String(64), nullable=True),
    Column("grant_name", String(200), nullable=True),
    Column("trace_carrier", Text, nullable=False, default="{}"),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Index("ix_scheduler_runs_account_state", "account", "state"),
)

transitions = Table(
    "scheduler_transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run", String(200), ForeignKey("scheduler_runs.name"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    Column("time_ms", BigInteger, nullable=False),
)

# The tier each account's runs are scheduled under (set at first submission, changed by admins).
accounts = Table(
    "scheduler_accounts",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("tier", String(64), nullable=False),
)

# Nodes an admin drained: they take no new runs until undrained.
drained_nodes = Table(
    "scheduler_drained_nodes",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("drained_ms", BigInteger, nullable=False),
)

# Usage events written in the same transaction as the state change that makes them.
outbox = Table(
    "scheduler_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(300), nullable=False, unique=True),
    Column("payload", LargeBinary, nullable=False),  # dlaas.metering.v1.UsageEvent
    Column("trace_carrier", Text, nullable=False, default="{}"),
    Column("created_ms", BigInteger, nullable=False),
    Column("delivered_ms", BigInteger, nullable=True, index=True),
)


@dataclass
class RunRow:
    name: str
    account: str
    tier: str
    spec: bytes
    code: bytes | None
    gpus: int
    gpu_type_wanted: str
    state: int
    attempt: int
    created_ms: int
    node: str | None = None
    gpu_type: str | None = None
    gpu_indices: list[int] = field(default_factory=list)
    allocations: list[tuple[str, str, list[int]]] = field(default_factory=list)
    exit_code: int | None = None
    termination_reason: int = 0
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    run_token_hash: str | None = None
    grant_name: str | None = None
    trace_carrier: dict[str, str] = field(default_factory=dict)
    cancel_requested: bool = False
    learners: int = 1
    priority: int = 0
    max_runtime_s: int = 0
    assigned_ms: int | None = None
    transitions: list[tuple[int, int]] = field(default_factory=list)  # (state, time_ms) of this attempt

    @classmethod
    def from_db(cls, row: Any) -> RunRow:
        values = dict(row._mapping)
        values["gpu_indices"] = json.loads(values["gpu_indices"] or "[]")
        values["allocations"] = [tuple(a) for a in json.loads(values.get("allocations") or "[]")]
        values["log_tail"] = json.loads(values["log_tail"] or "[]")
        values["trace_carrier"] = json.loads(values["trace_carrier"] or "{}")
        return cls(**values)

    def to_db(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items() if k != "transitions"}
        values["gpu_indices"] = json.dumps(self.gpu_indices)
        values["allocations"] = json.dumps([list(a) for a in self.allocations]) if self.allocations else None
        values["log_tail"] = json.dumps(self.log_tail)
        values["trace_carrier"] = json.dumps(self.trace_carrier)
        return values


# The statements of every submission, built once: SQLAlchemy then reuses their cache keys, where a
# statement built for each call costs about twice as much CPU to run (BENCHMARKS.md, bench-submit).
_INSERT_RUNS = insert(runs)
_INSERT_TRANSITIONS = insert(transitions)
_EXISTING = select(runs.c.name).where(runs.c.name.in_(bindparam("names", expanding=True)))
_QUEUED_BY_ACCOUNT = (
    select(runs.c.account, func.count())
    .where(runs.c.account.in_(bindparam("accounts", expanding=True)), runs.c.state == QUEUED_STATE)
    .group_by(runs.c.account)
)


class RunRepository:
    """Every write is a transaction of its own; callers pass the connection to group writes."""

    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def get(self, conn: AsyncConnection, name: str, *, account: str | None = None) -> RunRow | None:
        query = select(runs).where(runs.c.name == name)
        if account is not None:
            query = query.where(runs.c.account == account)
        row = (await conn.execute(query)).first()
        if row is None:
            return None
        run = RunRow.from_db(row)
        run.transitions = await self.transitions(conn, name)
        return run

    async def transitions(self, conn: AsyncConnection, name: str) -> list[tuple[int, int]]:
        """Every state the run entered, over all its attempts, oldest first."""
        rows = await conn.execute(
            select(transitions.c.state, transitions.c.time_ms)
            .where(transitions.c.run == name)
            .order_by(transitions.c.id)
        )
        return [(r.state, r.time_ms) for r in rows]

    async def insert_many(self, conn: AsyncConnection, new: list[RunRow]) -> None:
        """New runs with their first transition (at their created_ms): two statements for all."""
        if not new:
            return
        await conn.execute(_INSERT_RUNS, [run.to_db() for run in new])
        await conn.execute(
            _INSERT_TRANSITIONS,
            [{"run": r.name, "attempt": 0, "state": r.state, "time_ms": r.created_ms} for r in new],
        )

    async def existing(self, conn: AsyncConnection, names: set[str]) -> list[str]:
        """Which of `names` are runs already."""
        return list((await conn.execute(_EXISTING, {"names": list(names)})).scalars())

    async def save(self, conn: AsyncConnection, run: RunRow) -> None:
        values = run.to_db()
        name = values.pop("name")
        await conn.execute(update(runs).where(runs.c.name == name).values(**values))

    async def add_transition(self, conn: AsyncConnection, name: str, attempt: int, state: int, time_ms: int) -> None:
        await conn.execute(insert(transitions).values(run=name, attempt=attempt, state=state, time_ms=time_ms))

    async def in_states(
        self, conn: AsyncConnection, states: frozenset[int] | set[int], *, account: str | None = None
    ) -> list[RunRow]:
        query = select(runs).where(runs.c.state.in_(states))
        if account is not None:
            query = query.where(runs.c.account == account)
        rows = await conn.execute(query.order_by(runs.c.created_ms))
        return [RunRow.from_db(r) for r in rows]

    async def ended_with_grants(self, conn: AsyncConnection, ended: frozenset[int]) -> list[tuple[str, str]]:
        """(run, grant) of ended runs whose grant is not yet known to be revoked."""
        rows = await conn.execute(
            select(runs.c.name, runs.c.grant_name).where(runs.c.state.in_(ended), runs.c.grant_name.is_not(None))
        )
        return [(r.name, r.grant_name) for r in rows]

    async def clear_grant(self, conn: AsyncConnection, name: str, grant_name: str, ended: frozenset[int]) -> None:
        """Forgets a revoked grant of an ended run (a live run's grant is left alone)."""
        await conn.execute(
            update(runs)
            .where(runs.c.name == name, runs.c.grant_name == grant_name, runs.c.state.in_(ended))
            .values(grant_name=None)
        )

    async def list_for_account(self, conn: AsyncConnection, account: str, offset: int, limit: int) -> list[RunRow]:
        rows = await conn.execute(
            select(runs)
            .where(runs.c.account == account)
            .order_by(runs.c.created_ms.desc(), runs.c.name.desc())
            .offset(offset)
            .limit(limit)
        )
        result = []
        for row in rows:
            run = RunRow.from_db(row)
            run.transitions = await self.transitions(conn, run.name)
            result.append(run)
        return result

    async def queued_accounts(self, conn: AsyncConnection) -> dict[str, str]:
        """Each account with queued runs, with the tier its runs were submitted under."""
        rows = await conn.execute(select(runs.c.account, runs.c.tier).where(runs.c.state == QUEUED_STATE).distinct())
        return {r.account: r.tier for r in rows}

    async def count_queued_by_account(self, conn: AsyncConnection, accounts: set[str]) -> dict[str, int]:
        rows = await conn.execute(_QUEUED_BY_ACCOUNT, {"accounts": list(accounts)})
        return {account: int(count) for account, count in rows}

    async def count_for_account(self, conn: AsyncConnection, account: str) -> int:
        return int((await conn.execute(select(func.count()).where(runs.c.account == account))).scalar_one())

    # Outbox

    async def add_event(
        self, conn: AsyncConnection, event_id: str, payload: bytes, carrier: dict[str, str], now: int
    ) -> None:
        await conn.execute(
            insert(outbox).values(event_id=event_id, payload=payload, trace_carrier=json.dumps(carrier), created_ms=now)
        )

    async def pending_events(self, conn: AsyncConnection, limit: int) -> list[tuple[int, bytes, dict[str, str]]]:
        rows = await conn.execute(
            select(outbox.c.id, outbox.c.payload, outbox.c.trace_carrier)
            .where(outbox.c.delivered_ms.is_(None))
            .order_by(outbox.c.id)
            .limit(limit)
        )
        return [(r.id, r.payload, json.loads(r.trace_carrier)) for r in rows]

    async def mark_delivered(self, conn: AsyncConnection, ids: list[int], now: int) -> None:
        await conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(delivered_ms=now))


class ClusterRepository:
    """Account tiers and drained nodes."""

    async def tiers(self, conn: AsyncConnection) -> dict[str, str]:
        rows = await conn.execute(select(accounts.c.account, accounts.c.tier))
        return {r.account: r.tier for r in rows}

    async def set_tier(self, conn: AsyncConnection, account: str, tier: str, *, only_if_new: bool = False) -> None:
        existing = (await conn.execute(select(accounts.c.tier).where(accounts.c.account == account))).first()
        if existing is None:
            await conn.execute(insert(accounts).values(account=account, tier=tier))
        elif not only_if_new:
            await conn.execute(update(accounts).where(accounts.c.account == account).values(tier=tier))

    async def drained(self, conn: AsyncConnection) -> set[str]:
        return {r.name for r in await conn.execute(select(drained_nodes.c.name))}

    async def set_drained(self, conn: AsyncConnection, name: str, drained: bool, now: int) -> None:
        await conn.execute(delete(drained_nodes).where(drained_nodes.c.name == name))
        if drained:
            await conn.execute(insert(drained_nodes).values(name=name, drained_ms=now))
