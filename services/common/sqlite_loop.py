"""SQLite for SQLAlchemy's asyncio engine, answered on the event loop's own thread.

aiosqlite runs a connection's calls on a thread of its own: every cursor, execute, fetch and
close goes there and back (a queue, a self-pipe wake-up, the GIL handed over twice). That hop
costs about 75 µs of CPU on our machines, and SQLAlchemy makes four to six of them a statement,
while our services' statements take a few microseconds in SQLite itself: 460 µs of CPU a
statement through aiosqlite against 30 µs through SQLAlchemy's sync engine (BENCHMARKS.md,
"SQLite on the loop"). This module answers the same calls at once, in the calling thread, with
the standard library's sqlite3: SQLAlchemy's aiosqlite dialect drives it through
`async_creator`, unchanged, so statements, types and errors are those of sqlite3.

The cost: while SQLite runs a statement the loop waits. That is short because each service is
its file's only writer while it runs (one engine of one pooled connection, see
`db.create_engine`), and WAL mode lets other processes read without blocking it; what remains is
the fsync of a WAL checkpoint, every 1,000 pages written (3-9 ms, a few times in 3,000
submissions of bench-submit). A second writer, another process or a second engine on the same
file in this one, would make statements wait in SQLite's busy handler on the loop's thread: the
busy timeout is short (db.BUSY_TIMEOUT_MS), so that mistake shows as "database is locked" at
once instead of a service that stops answering.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL


class Cursor:
    """aiosqlite's Cursor, as SQLAlchemy's adapter uses it."""

    def __init__(self, cursor: sqlite3.Cursor):
        self._cursor = cursor

    async def __aenter__(self) -> Cursor:  # SQLAlchemy's adapter enters each cursor it makes
        return self

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[Any]:
        for row in self._cursor:
            yield row

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | dict[str, Any]]) -> Cursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _AtOnce:
    """Stands for aiosqlite's queue to its thread, which SQLAlchemy's adapter fills directly
    to set a connection's isolation level: the call is made as it is queued."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the future
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class Connection:
    """aiosqlite's Connection, as SQLAlchemy's adapter uses it."""

    def __init__(self, connection: sqlite3.Connection):
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # None once closed, as aiosqlite's
        self._tx = _AtOnce()

    def cursor(self) -> Cursor:
        return Cursor(self._conn.cursor())

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def connector(url: URL) -> Callable[[], Any]:
    """The `async_creator` of an engine for `url` (sqlite+aiosqlite://…): sqlite3 connections
    opened with the arguments SQLAlchemy's own SQLite dialects derive from the URL."""
    args, kwargs = SQLiteDialect_pysqlite().create_connect_args(url)
    kwargs["check_same_thread"] = False  # the pool may close it from another thread at exit

    async def connect() -> Connection:
        return Connection(sqlite3.connect(*args, **kwargs))  # type: ignore[call-overload]

    return connect
