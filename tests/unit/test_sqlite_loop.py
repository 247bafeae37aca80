"""SQLite answered on the event loop's thread (services.common.sqlite_loop), through the engine
every service gets from db.create_engine."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.sqlite_loop import Connection
from tests.support import sqlite_tables

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("name", String(20), unique=True))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with sqlite_tables(tmp_path / "db" / "test.db", metadata) as engine:
        yield engine


async def test_statements_run_on_the_loops_thread_with_the_services_pragmas(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert isinstance(driver, Connection)
        await driver.create_function("thread_id", 0, threading.get_ident)
        assert (await conn.execute(text("SELECT thread_id()"))).scalar_one() == threading.get_ident()
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1


async def test_a_failed_transaction_leaves_nothing_and_the_error_is_sqlalchemys(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(items), [{"name": "a"}])
    with pytest.raises(IntegrityError, match="UNIQUE"):
        async with engine.begin() as conn:
            await conn.execute(insert(items), [{"name": "b"}, {"name": "c"}])
            await conn.execute(insert(items), [{"name": "a"}])
    with pytest.raises(OperationalError, match="no such table"):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM missing_table"))
    async with engine.connect() as conn:
        assert (await conn.execute(select(items.c.name))).scalars().all() == ["a"]


async def test_concurrent_transactions_share_the_one_connection_in_turn(engine: AsyncEngine) -> None:
    async def add(i: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(items).values(name=f"n{i}"))
            await asyncio.sleep(0)  # another coroutine's transaction must wait for this one
            await conn.execute(insert(items).values(name=f"m{i}"))

    await asyncio.gather(*(add(i) for i in range(50)))
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(items))).scalar_one() == 100


async def test_rows_come_in_pages_and_the_engine_reopens_after_dispose(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(items), [{"name": f"r{i:03}"} for i in range(250)])
    await engine.dispose()
    async with engine.connect() as conn:
        result = await conn.stream(select(items.c.name).order_by(items.c.name))
        names = [row.name async for row in result]
    assert names == [f"r{i:03}" for i in range(250)]


async def test_another_writer_on_the_file_is_refused_at_once_not_waited_for(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """The service is its file's only writer; a second one is a mistake that shows as an error
    after the short busy timeout, not as a loop stalled for seconds."""
    other = sqlite3.connect(tmp_path / "db" / "test.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(OperationalError, match="database is locked"):
            async with engine.begin() as conn:
                await conn.execute(insert(items).values(name="x"))
        async with engine.connect() as conn:  # reading goes on meanwhile (WAL)
            assert (await conn.execute(select(func.count()).select_from(items))).scalar_one() == 0
    finally:
        other.rollback()
        other.close()
    async with engine.begin() as conn:
        await conn.execute(insert(items).values(name="x"))
