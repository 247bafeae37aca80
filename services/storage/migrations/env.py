"""Alembic environment of the storage service (its own version table: storage_alembic_version)."""

from __future__ import annotations

from services.common.migrations import run_migrations
from services.storage.adapters.db import Base

run_migrations(Base.metadata)
