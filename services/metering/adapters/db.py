"""Metering's tables and the repository over them.

Exactly once: an event's id goes into `usage_applied_events` in the same transaction as the change
it makes to its interval. A second delivery finds the id there (or, if the first is still in
flight, waits for it on the primary key) and changes nothing. A batch of events is one
transaction: the ids are claimed first (sorted, so concurrent batches never wait on each other in
a cycle), then only the newly claimed events touch their intervals, locked in key order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

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
    bindparam,
    case,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import session_factory
from services.common.timeutil import now_ms
from services.metering.domain.rating import Price, PriceBook
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

prices = Table(
    "metering_prices",
    metadata,
    Column("gpu_type", String(200), nullable=False),  # lower case; "*" for every other type
    Column("effective_ms", BigInteger, nullable=False, autoincrement=False),
    Column("micros_per_gpu_hour", BigInteger, nullable=False),
    PrimaryKeyConstraint("gpu_type", "effective_ms", name="pk_metering_prices"),
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

    async def apply_all(self, events: list[UsageEvent]) -> int:
        """Applies, in one transaction, each event whose id was not applied before; returns how many."""
        first: dict[str, UsageEvent] = {}
        for event in events:
            first.setdefault(event.event_id, event)
        ids = sorted(first)
        async with self._sessions() as session:
            now = now_ms()
            claim = self._insert_ignoring(applied_events).returning(applied_events.c.event_id)
            rows = [{"event_id": event_id, "applied_at_ms": now} for event_id in ids]
            claimed = set((await session.execute(claim, rows)).scalars())
            if not claimed:
                await session.rollback()
                return 0
            fresh = [event for event in events if event.event_id in claimed and first[event.event_id] is event]
            by_key: dict[tuple[str, int], list[UsageEvent]] = {}
            for event in fresh:
                by_key.setdefault((event.run, event.attempt), []).append(event)
            keys = sorted(by_key)
            # Make sure the rows exist, then lock them: an OPEN and a CLOSE of one attempt applied at
            # once must both land, one after the other.
            blanks = [
                {
                    "run": run,
                    "attempt": attempt,
                    "account": by_key[(run, attempt)][0].account,
                    "run_id": by_key[(run, attempt)][0].run_id,
                    "gpus": 0,
                    "gpu_type": "",
                    "node": "",
                }
                for run, attempt in keys
            ]
            await session.execute(self._insert_ignoring(intervals), blanks)
            current: dict[tuple[str, int], UsageInterval] = {}
            for chunk in _chunks(keys, _CHUNK):
                # ORDER BY: rows are locked in key order, as every other batch locks them.
                locked = (
                    select(intervals)
                    # run IN as well: SQLite answers the row-value IN alone by scanning the table.
                    .where(intervals.c.run.in_(sorted({run for run, _ in chunk})))
                    .where(tuple_(intervals.c.run, intervals.c.attempt).in_(chunk))
                    .order_by(intervals.c.run, intervals.c.attempt)
                    .with_for_update()
                )
                for row in (await session.execute(locked)).all():
                    current[(row.run, row.attempt)] = _interval(row)
            changes = []
            for key in keys:
                after = current[key]
                for event in by_key[key]:
                    after = apply_event(after, event)
                changes.append(
                    {
                        "k_run": key[0],
                        "k_attempt": key[1],
                        "gpus": after.gpus,
                        "gpu_type": after.gpu_type,
                        "node": after.node,
                        "start_ms": after.start_ms,
                        "end_ms": after.end_ms,
                    }
                )
            await session.execute(_UPDATE_INTERVAL, changes)
            await session.commit()
            return len(fresh)

    def _insert_ignoring(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """INSERT … ON CONFLICT DO NOTHING, executed with many rows (batched by the driver layer)."""
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        return insert(table).on_conflict_do_nothing()

    async def seed_prices(self, seed: list[Price]) -> None:
        """Adds the prices the book lacks. A price already in the book for a type and date is kept:
        change a price by adding one with a later effective date, never by rewriting the past."""
        if not seed:
            return
        rows = [
            {"gpu_type": p.gpu_type, "effective_ms": p.effective_ms, "micros_per_gpu_hour": p.micros_per_gpu_hour}
            for p in seed
        ]
        async with self._sessions() as session:
            await session.execute(self._insert_ignoring(prices), rows)
            await session.commit()

    async def price_book(self, currency: str) -> PriceBook:
        async with self._sessions() as session:
            rows = (await session.execute(select(prices))).all()
        return PriceBook((Price(r.gpu_type, r.effective_ms, r.micros_per_gpu_hour) for r in rows), currency)

    async def overlapping(
        self, account: str, start_ms: int, end_ms: int, run: str | None = None
    ) -> list[UsageInterval]:
        """The account's opened intervals with a part in [start, end): closed after start, or still open."""
        where = [
            intervals.c.account == account,
            intervals.c.start_ms.is_not(None),
            intervals.c.start_ms < end_ms,
            (intervals.c.end_ms.is_(None)) | (intervals.c.end_ms > start_ms),
        ]
        if run is not None:
            where.append(intervals.c.run == run)
        query = select(intervals).where(*where).order_by(intervals.c.run, intervals.c.attempt)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [_interval(row) for row in rows]

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


_CHUNK = 400  # rows per multi-row statement: under SQLite's 32,766 bound parameters

_UPDATE_INTERVAL = (
    update(intervals)
    .where((intervals.c.run == bindparam("k_run")) & (intervals.c.attempt == bindparam("k_attempt")))
    .values(
        gpus=bindparam("gpus"),
        gpu_type=bindparam("gpu_type"),
        node=bindparam("node"),
        start_ms=bindparam("start_ms"),
        end_ms=bindparam("end_ms"),
    )
)

T = TypeVar("T")


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]
