"""The gateway's tables: run specs as submitted (idempotent on request_id)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    LargeBinary,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import Aborted

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


@dataclass(frozen=True)
class NewSpec:
    spec: StoredSpec
    manifest: str  # as submitted, minus inline credentials
    created_ms: int


# The statements of every submission, built once (SQLAlchemy then reuses their cache keys).
_INSERT = insert(run_specs)
# Each column IN its own list, not (account, request_id) IN a list of pairs: SQLite answers that
# row-value IN by scanning the whole table, this one through the unique index. The rows of pairs
# that were not asked for (another account's request_id) are dropped by the caller's lookup.
_BY_REQUESTS = select(run_specs).where(
    run_specs.c.account.in_(bindparam("accounts", expanding=True)),
    run_specs.c.request_id.in_(bindparam("ids", expanding=True)),
)


def _stored(row: Row[Any]) -> StoredSpec:
    return StoredSpec(row.name, row.account, row.request_id, row.spec, row.code_key, row.submitted)


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
        return None if row is None else _stored(row)

    async def add_many(self, adds: Sequence[NewSpec]) -> list[StoredSpec | BaseException | None]:
        """Stores the specs in one transaction; for each, None, or the spec stored earlier under
        its request_id (then nothing is stored for it)."""
        for _ in range(3):
            try:
                return await self._add_once(adds)
            except IntegrityError:
                continue  # another writer stored one of these request_ids meanwhile: look again
        return [Aborted("the run could not be stored under concurrent submissions; retry it") for _ in adds]

    async def _add_once(self, adds: Sequence[NewSpec]) -> list[StoredSpec | BaseException | None]:
        async with self.engine.begin() as conn:
            keys = {(a.spec.account, a.spec.request_id) for a in adds if a.spec.request_id}
            earlier: dict[tuple[str, str | None], StoredSpec] = {}
            if keys:
                rows = await conn.execute(
                    _BY_REQUESTS, {"accounts": list({k[0] for k in keys}), "ids": list({k[1] for k in keys})}
                )
                earlier = {(r.account, r.request_id): _stored(r) for r in rows}
            outcomes: list[StoredSpec | BaseException | None] = []
            new = []
            for add in adds:
                key = (add.spec.account, add.spec.request_id)
                if add.spec.request_id and key in earlier:
                    outcomes.append(earlier[key])
                    continue
                if add.spec.request_id:
                    earlier[key] = add.spec  # a second call with this request_id in the same batch
                outcomes.append(None)
                new.append(
                    {
                        "name": add.spec.name,
                        "account": add.spec.account,
                        "request_id": add.spec.request_id,
                        "manifest": add.manifest,
                        "spec": add.spec.spec,
                        "code_key": add.spec.code_key,
                        "submitted": False,
                        "created_ms": add.created_ms,
                    }
                )
            if new:
                await conn.execute(_INSERT, new)
        return outcomes

    async def remove(self, names: Sequence[str]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(run_specs).where(run_specs.c.name.in_(names)))
