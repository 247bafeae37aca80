"""Metering's tables and the repository over them.

Exactly once: an event's id goes into `usage_applied_events` in the same transaction as the change
it makes to its interval. A second delivery finds the id there (or, if the first is still in
flight, waits for it on the primary key) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Row,
    String,
    Table,
    case,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import session_factory
from services.common.timeutil import now_ms
from services.metering.domain.usage import UsageEvent, UsageInterval, UsageQuery, apply_event

metadata = MetaData()

applied_events = Table(
    "usage_applied_events",
    metadata,
    Column("event_id", String(300), nullable=False),
    # Metering's own clock, for operators only: billing uses the event times.
    Column("applied_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("event_id", name="pk_usage_applied_events"),
)

intervals = Table(
    "usage_intervals",
    metadata,
    Column("run", String(200), nullable=False),
    Column("attempt", Integer, nullable=False, autoincrement=False),
    Column("account", String(64), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("gpu_type", String(200), nullable=False),
    Column("node", String(200), nullable=False),
    Column("start_ms", BigInteger, nullable=True),  # NULL until the OPEN event is applied
    Column("end_ms", BigInteger, nullable=True),  # NULL until the CLOSE event is applied
    PrimaryKeyConstraint("run", "attempt", name="pk_usage_intervals"),
    Index("ix_usage_intervals_account_start", "account", "start_ms"),
)


@dataclass(frozen=True)
class UsagePage:
    intervals: list[UsageInterval]
    more: bool
    total_gpu_milliseconds: int


class UsageRepository:
    def __init__(self, engine: AsyncEngine):
        self._sessions = session_factory(engine)
        self._dialect = engine.dialect.name

    def _insert_unless_present(self, table: Table, values: dict[str, Any]) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT DO NOTHING: a row another transaction holds is waited for, not duplicated."""
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        return insert(table).values(**values).on_conflict_do_nothing()

    async def apply(self, event: UsageEvent) -> bool:
        """Applies `event` unless its id was applied before; True if it was applied now."""
        async with self._sessions() as session:
            claim = self._insert_unless_present(
                applied_events, {"event_id": event.event_id, "applied_at_ms": now_ms()}
            ).returning(applied_events.c.event_id)
            if (await session.execute(claim)).first() is None:
                await session.rollback()
                return False
            key = (intervals.c.run == event.run) & (intervals.c.attempt == event.attempt)
            # Make sure the row exists, then lock it: an OPEN and a CLOSE of one attempt applied at
            # once must both land, one after the other.
            await session.execute(
                self._insert_unless_present(
                    intervals,
                    {
                        "run": event.run,
                        "attempt": event.attempt,
                        "account": event.account,
                        "run_id": event.run_id,
                        "gpus": 0,
                        "gpu_type": "",
                        "node": "",
                    },
                )
            )
            row = (await session.execute(select(intervals).where(key).with_for_update())).one()
            after = apply_event(_interval(row), event)
            await session.execute(
                update(intervals)
                .where(key)
                .values(
                    gpus=after.gpus,
                    gpu_type=after.gpu_type,
                    node=after.node,
                    start_ms=after.start_ms,
                    end_ms=after.end_ms,
                )
            )
            await session.commit()
            return True

    async def list_intervals(self, query: UsageQuery, offset: int, limit: int, now_ms: int) -> UsagePage:
        """Opened intervals of `query`, oldest first, and the GPU time of all of them (not just the page)."""
        where = [intervals.c.account == query.account, intervals.c.start_ms.is_not(None)]
        if query.run is not None:
            where.append(intervals.c.run == query.run)
        # Same rule as UsageInterval.gpu_milliseconds: gpus * (end, or now while accruing, - start), at least 0.
        until = func.coalesce(intervals.c.end_ms, literal(now_ms, BigInteger))
        elapsed = case((until > intervals.c.start_ms, until - intervals.c.start_ms), else_=literal(0, BigInteger))
        page = (
            select(intervals)
            .where(*where)
            .order_by(intervals.c.start_ms, intervals.c.run, intervals.c.attempt)
            .offset(offset)
            .limit(limit + 1)
        )
        total = select(func.coalesce(func.sum(intervals.c.gpus * elapsed), 0)).where(*where)
        async with self._sessions() as session:
            rows = (await session.execute(page)).all()
            total_ms = (await session.execute(total)).scalar_one()
        return UsagePage(
            intervals=[_interval(row) for row in rows[:limit]],
            more=len(rows) > limit,
            total_gpu_milliseconds=int(total_ms),
        )


def _interval(row: Row[Any]) -> UsageInterval:
    return UsageInterval(
        account=row.account,
        run=row.run,
        run_id=row.run_id,
        attempt=row.attempt,
        gpus=row.gpus,
        gpu_type=row.gpu_type,
        node=row.node,
        start_ms=row.start_ms,
        end_ms=row.end_ms,
    )
