"""Fixtures that start real services on ephemeral ports, on SQLite or on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import SPANS, Platform, start_platform

POSTGRES_ADMIN_URL = os.environ.get("DLAAS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The PostgreSQL server the suite may use. In CI its absence fails the tests, never skips them."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI at {POSTGRES_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    yield POSTGRES_ADMIN_URL


class DatabaseFactory:
    """Makes one fresh database per service for a test, and drops them afterwards."""

    def __init__(self, kind: str, tmp_path: Path, admin_url: str | None):
        self.kind = kind
        self.tmp_path = tmp_path
        self.admin_url = admin_url
        self.created: list[str] = []

    def url(self, service: str) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp_path / f'{service}.db'}"
        assert self.admin_url
        name = f"dlaas_test_{service}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        if not self.created or not self.admin_url:
            return
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseFactory]:
    admin = request.getfixturevalue("postgres_admin") if request.param == "postgres" else None
    factory = DatabaseFactory(request.param, tmp_path, admin)
    yield factory
    factory.drop_all()


@pytest.fixture
def sqlite_databases(tmp_path: Path) -> DatabaseFactory:
    return DatabaseFactory("sqlite", tmp_path, None)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    SPANS.clear()
    return SPANS


@pytest.fixture
async def platform(databases: DatabaseFactory, tmp_path: Path) -> AsyncIterator[Platform]:
    started = await start_platform(databases, tmp_path)
    yield started
    await started.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    """Ceph RGW on 127.0.0.1 (tests/s3.py: an S3Server), once per session. In CI its absence fails the tests."""
    from tests.s3 import s3_server_or_skip

    yield from s3_server_or_skip()
