"""The gateway's account tables: accounts and their API keys (hashes only)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    String,
    Table,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api_gateway.adapters.db import metadata

accounts = Table(
    "gateway_accounts",
    metadata,
    Column("account", String(63), primary_key=True),
    Column("tier", String(64), nullable=False),
    Column("request_id", String(200), nullable=True, unique=True),
    Column("created_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "gateway_api_keys",
    metadata,
    Column("prefix", String(32), primary_key=True),
    Column("account", String(63), nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the whole key
    Column("admin", Boolean, nullable=False, default=False),
    Column("description", String(200), nullable=False, default=""),
    Column("request_id", String(200), nullable=True),
    Column("created_ms", BigInteger, nullable=False),
    Column("revoked_ms", BigInteger, nullable=True),
    UniqueConstraint("account", "request_id", name="uq_gateway_api_keys_request"),
    Index("ix_gateway_api_keys_account", "account"),
)


@dataclass(frozen=True)
class AccountRow:
    account: str
    tier: str
    created_ms: int


@dataclass(frozen=True)
class KeyRow:
    prefix: str
    account: str
    digest: str
    admin: bool
    description: str
    created_ms: int
    revoked_ms: int | None


def _key(row: object) -> KeyRow:
    r = row  # a Row of api_keys
    return KeyRow(r.prefix, r.account, r.digest, r.admin, r.description, r.created_ms, r.revoked_ms)  # type: ignore[attr-defined]


class AccountRepository:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    async def create(self, account: AccountRow, key: KeyRow, request_id: str | None) -> bool:
        """Stores the account with its first key, in one transaction; False when it exists."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(accounts).values(
                        account=account.account, tier=account.tier, request_id=request_id, created_ms=account.created_ms
                    )
                )
                await conn.execute(insert(api_keys).values(**_key_values(key), request_id=request_id))
        except IntegrityError:
            return False
        return True

    async def add_key(self, key: KeyRow, request_id: str | None) -> bool:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(api_keys).values(**_key_values(key), request_id=request_id))
        except IntegrityError:
            return False
        return True

    async def get(self, account: str) -> AccountRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.account == account))).first()
        return AccountRow(row.account, row.tier, row.created_ms) if row else None

    async def by_request(self, request_id: str) -> AccountRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.request_id == request_id))).first()
        return AccountRow(row.account, row.tier, row.created_ms) if row else None

    async def page(self, offset: int, limit: int) -> tuple[list[AccountRow], int]:
        async with self.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(accounts))).scalar_one()
            rows = await conn.execute(select(accounts).order_by(accounts.c.account).offset(offset).limit(limit))
            return [AccountRow(r.account, r.tier, r.created_ms) for r in rows], total

    async def set_tier(self, account: str, tier: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(accounts).where(accounts.c.account == account).values(tier=tier))

    async def key(self, prefix: str) -> KeyRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))).first()
        return _key(row) if row else None

    async def key_by_request(self, account: str, request_id: str) -> KeyRow | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys).where(api_keys.c.account == account, api_keys.c.request_id == request_id)
                )
            ).first()
        return _key(row) if row else None

    async def keys(self, account: str, offset: int, limit: int) -> tuple[list[KeyRow], int]:
        async with self.engine.connect() as conn:
            where = api_keys.c.account == account
            total = (await conn.execute(select(func.count()).select_from(api_keys).where(where))).scalar_one()
            rows = await conn.execute(
                select(api_keys)
                .where(where)
                .order_by(api_keys.c.created_ms.desc(), api_keys.c.prefix)
                .offset(offset)
                .limit(limit)
            )
            return [_key(r) for r in rows], total

    async def active_admin_keys(self) -> int:
        async with self.engine.connect() as conn:
            where = api_keys.c.admin.is_(True) & api_keys.c.revoked_ms.is_(None)
            return int((await conn.execute(select(func.count()).select_from(api_keys).where(where))).scalar_one())

    async def revoke(self, account: str, prefix: str, revoked_ms: int) -> KeyRow | None:
        """Revokes the account's key (the first revocation time stays); None when it has no such key."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.account == account, api_keys.c.prefix == prefix, api_keys.c.revoked_ms.is_(None))
                .values(revoked_ms=revoked_ms)
            )
            row = (
                await conn.execute(select(api_keys).where(api_keys.c.account == account, api_keys.c.prefix == prefix))
            ).first()
        return _key(row) if row else None


def _key_values(key: KeyRow) -> dict[str, object]:
    return {
        "prefix": key.prefix,
        "account": key.account,
        "digest": key.digest,
        "admin": key.admin,
        "description": key.description,
        "created_ms": key.created_ms,
        "revoked_ms": key.revoked_ms,
    }
