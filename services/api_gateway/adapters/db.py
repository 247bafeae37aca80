"""The gateway's tables: run specs as submitted (idempotent on request_id)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

metadata = MetaData()

run_specs = Table(
    "gateway_run_specs",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("account", String(64), nullable=False),
    Column("request_id", String(200), nullable=True),
    Column("manifest", Text, nullable=False),  # as submitted, minus inline credentials
    Column("spec", LargeBinary, nullable=False),  # dlaas.types.v1.RunSpec
    Column("code_key", String(300), nullable=True),
    # Unused since retries always go to the scheduler again (idempotent on the run name); kept
    # so that the schema needs no migration.
    Column("submitted", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    UniqueConstraint("account", "request_id", name="uq_gateway_run_specs_request"),
)


@dataclass
class StoredSpec:
    name: str
    account: str
    request_id: str | None
    spec: bytes
    code_key: str | None
    submitted: bool


class SpecRepository:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def by_request(self, account: str, request_id: str) -> StoredSpec | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(run_specs).where(run_specs.c.account == account, run_specs.c.request_id == request_id)
                )
            ).first()
        if row is None:
            return None
        return StoredSpec(row.name, row.account, row.request_id, row.spec, row.code_key, row.submitted)

    async def add(self, spec: StoredSpec, manifest: str, created_ms: int) -> bool:
        """Stores the spec; False when the same request_id got there first."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(run_specs).values(
                        name=spec.name,
                        account=spec.account,
                        request_id=spec.request_id,
                        manifest=manifest,
                        spec=spec.spec,
                        code_key=spec.code_key,
                        submitted=False,
                        created_ms=created_ms,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def remove(self, name: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(run_specs).where(run_specs.c.name == name))
