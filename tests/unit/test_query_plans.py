"""The statements that each submission and each metering batch make look rows up through an index.

A statement that scans its table costs in proportion to everything ever stored: the gateway's
intake would slow with every run submitted. These tests record each SELECT a repository makes on
SQLite and ask SQLite for its plan (EXPLAIN QUERY PLAN, on the same file, with the same values).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api_gateway.adapters.db import NewSpec, SpecRepository, StoredSpec
from services.api_gateway.adapters.db import metadata as gateway_tables
from services.metering.adapters.db import UsageRepository
from services.metering.adapters.db import metadata as metering_tables
from services.metering.domain.usage import EventKind, UsageEvent
from tests.support import sqlite_tables


@contextlib.contextmanager
def selects(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs `engine` runs meanwhile, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not many:
            seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def plans(database: Path, statements: list[tuple[str, Any]]) -> list[list[str]]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [[row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)] for sql, params in statements]


def spec(account: str, request_id: str, n: int) -> NewSpec:
    stored = StoredSpec(f"accounts/{account}/runs/run-{n}", account, request_id, b"spec", None, False)
    return NewSpec(stored, "manifest", 0)


async def test_a_batch_of_submissions_finds_its_earlier_request_ids_through_the_index(tmp_path: Path) -> None:
    database = tmp_path / "gateway.db"
    async with sqlite_tables(database, gateway_tables) as engine:
        specs = SpecRepository(engine)
        await specs.add_many([spec(f"acct-{i % 7}", f"r{i}", i) for i in range(200)])
        await specs.add_many([spec("a", "r1", 1001), spec("a", "r2", 1002)])
        with selects(engine) as seen:
            # a's r2 again (a retry), b's first r1 (a's r1 is someone else's), two of b's in one batch
            outcomes = await specs.add_many(
                [spec("a", "r2", 2001), spec("b", "r1", 2002), spec("b", "r3", 2003), spec("b", "r3", 2004)]
            )

    assert [o.name if isinstance(o, StoredSpec) else o for o in outcomes] == [
        "accounts/a/runs/run-1002",
        None,
        None,
        "accounts/b/runs/run-2003",
    ]
    assert seen, "the batch looked up no earlier request_ids"
    for plan in plans(database, seen):
        assert not any(step.startswith("SCAN gateway_run_specs") for step in plan), plan
        assert any(step.startswith("SEARCH gateway_run_specs USING INDEX") for step in plan), plan


def usage_event(run: int, kind: EventKind, time_ms: int) -> UsageEvent:
    name = f"accounts/acme/runs/run-{run}"
    return UsageEvent(f"{name}/attempts/1/{kind.name}", "acme", name, f"id-{run}", 1, kind, time_ms, 1, "h100", "n1")


async def test_a_batch_of_usage_events_finds_its_intervals_through_the_index(tmp_path: Path) -> None:
    database = tmp_path / "metering.db"
    async with sqlite_tables(database, metering_tables) as engine:
        usage = UsageRepository(engine)
        await usage.apply_all([usage_event(run, EventKind.OPEN, 1_000) for run in range(200)])
        with selects(engine) as seen:
            applied = await usage.apply_all([usage_event(run, EventKind.CLOSE, 5_000) for run in (3, 17, 150)])

    assert applied == 3
    interval_reads = [s for s in seen if "FROM usage_intervals" in s[0]]
    assert interval_reads, "the batch read no intervals"
    for plan in plans(database, interval_reads):
        assert not any(step.startswith("SCAN usage_intervals") for step in plan), plan
