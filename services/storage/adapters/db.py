"""The grant ledger: SQLAlchemy model and repository. Rows are translated to domain values here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.storage.domain.model import Access, AccessMode, Grant, LocalPath, Location


class Base(DeclarativeBase):
    pass


class GrantRow(Base):
    __tablename__ = "grants"
    __table_args__ = (
        UniqueConstraint("account", "request_id", name="uq_grants_account_request_id"),
        Index("ix_grants_account_run", "account", "run"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account: Mapped[str] = mapped_column(String(63))
    run: Mapped[str | None] = mapped_column(String(255))
    # The accesses as issued, in the order asked: [{"location": {...}, "mode": ..., "method": {...}}].
    accesses: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    expire_ms: Mapped[int] = mapped_column(BigInteger)
    revoke_ms: Mapped[int | None] = mapped_column(BigInteger)
    # NULL when the caller gave none: the unique constraint then does not apply.
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_ms: Mapped[int] = mapped_column(BigInteger)


def _access_to_json(access: Access) -> dict[str, Any]:
    location = access.location
    return {
        "location": {"connection": location.connection, "bucket": location.bucket, "prefix": location.prefix},
        "mode": access.mode.value,
        "method": {"local": {"path": access.method.path}},
    }


def _access_from_json(data: dict[str, Any]) -> Access:
    location = data["location"]
    return Access(
        location=Location(location["connection"], location["bucket"], location["prefix"]),
        mode=AccessMode(data["mode"]),
        method=LocalPath(data["method"]["local"]["path"]),
    )


def _to_domain(row: GrantRow) -> Grant:
    return Grant(
        id=row.id,
        account=row.account,
        run=row.run or "",
        accesses=tuple(_access_from_json(access) for access in row.accesses),
        expire_ms=row.expire_ms,
        revoke_ms=row.revoke_ms,
        request_id=row.request_id or "",
        created_ms=row.created_ms,
    )


def _to_row(grant: Grant) -> GrantRow:
    return GrantRow(
        id=grant.id,
        account=grant.account,
        run=grant.run or None,
        accesses=[_access_to_json(access) for access in grant.accesses],
        expire_ms=grant.expire_ms,
        revoke_ms=grant.revoke_ms,
        request_id=grant.request_id or None,
        created_ms=grant.created_ms,
    )


class SqlGrantRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self._sessions = sessions

    async def get(self, account: str, grant_id: str) -> Grant | None:
        async with self._sessions() as session:
            row = await session.scalar(select(GrantRow).where(GrantRow.account == account, GrantRow.id == grant_id))
            return _to_domain(row) if row else None

    async def find_by_request_id(self, account: str, request_id: str) -> Grant | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(GrantRow).where(GrantRow.account == account, GrantRow.request_id == request_id)
            )
            return _to_domain(row) if row else None

    async def insert(self, grant: Grant) -> Grant:
        try:
            async with self._sessions() as session, session.begin():
                session.add(_to_row(grant))
        except IntegrityError:
            # A concurrent request with the same request_id got there first: its grant is the answer.
            earlier = await self.find_by_request_id(grant.account, grant.request_id) if grant.request_id else None
            if earlier is None:
                raise
            return earlier
        return grant

    async def revoke(self, account: str, grant_id: str, now_ms: int) -> Grant | None:
        async with self._sessions() as session, session.begin():
            await session.execute(
                update(GrantRow)
                .where(GrantRow.account == account, GrantRow.id == grant_id, GrantRow.revoke_ms.is_(None))
                .values(revoke_ms=now_ms)
            )
            row = await session.scalar(select(GrantRow).where(GrantRow.account == account, GrantRow.id == grant_id))
            return _to_domain(row) if row else None
