"""Database plumbing shared by every service: engines, sessions, migrations.

Each service keeps its own tables and its own Alembic history (its own version table).
URLs are given in their plain form (sqlite:///path, postgresql://user@host/db); the drivers
are chosen here: SQLite on the event loop's thread (sqlite_loop) or psycopg for the service, the
sync ones for Alembic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from services.common import sqlite_loop


def _with_driver(url: str, sqlite_driver: str) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername=sqlite_driver).render_as_string(hide_password=False)
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:// or postgresql://")


def async_url(url: str) -> str:
    return _with_driver(url, "sqlite+aiosqlite")


def sync_url(url: str) -> str:
    return _with_driver(url, "sqlite")


BUSY_TIMEOUT_MS = 250


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers go on while one writer commits. The service is its file's only writer and
    # waits on the event loop's thread (sqlite_loop): a lock held by anyone else is a mistake, to
    # fail fast ("database is locked") rather than to stall every call for long.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    full = async_url(url)
    if full.startswith("sqlite"):
        database = make_url(full).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # SQLite has one writer at a time: one connection, whose callers queue in asyncio, beats several
        # connections that collide on the file lock and sleep in SQLite's busy handler.
        # Its statements are answered on the event loop's thread (sqlite_loop: a thread hop per call
        # cost more than the statements).
        engine = create_async_engine(
            full, pool_size=1, max_overflow=0, pool_timeout=60, async_creator=sqlite_loop.connector(make_url(full))
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(full, pool_size=10, max_overflow=20, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def migrate(url: str, migrations_dir: Path, version_table: str, revision: str = "head") -> None:
    """Brings the service's tables to `revision` (blocking; call before serving)."""
    full = sync_url(url)
    if full.startswith("sqlite"):
        database = make_url(full).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", full.replace("%", "%%"))
    config.attributes["version_table"] = version_table
    command.upgrade(config, revision)
