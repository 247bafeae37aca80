"""The grant ledger and the connection registry: SQLAlchemy models and repositories.

Rows are translated to domain values here, and secrets are sealed (AES-GCM, adapters/secrets.py)
on the way in and opened on the way out: no column ever holds a key in plaintext.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, String, Text, UniqueConstraint, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.storage.adapters.secrets import KeyRing
from services.storage.domain.model import (
    Access,
    AccessMode,
    Connection,
    Grant,
    LocalPath,
    Location,
    PresignedObject,
    PresignedUrls,
    S3Credentials,
)


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
    # SHA-256 of the run token that may renew the grant (a hash: the token itself is never kept).
    run_token_sha256: Mapped[str | None] = mapped_column(String(64))


class ConnectionRow(Base):
    __tablename__ = "connections"
    __table_args__ = (UniqueConstraint("account", "request_id", name="uq_connections_account_request_id"),)

    account: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(2048))
    region: Mapped[str] = mapped_column(String(63))
    # Sealed JSON {"access_key_id": …, "secret_access_key": …}, bound to (account, id).
    credentials: Mapped[str] = mapped_column(Text)
    access_key_hint: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(128))
    create_ms: Mapped[int] = mapped_column(BigInteger)
    presigned_urls: Mapped[bool] = mapped_column(Boolean, default=False)


def _connection_aad(account: str, connection_id: str) -> bytes:
    return f"connection:{account}/{connection_id}".encode()


def _grant_aad(account: str, grant_id: str) -> bytes:
    return f"grant:{account}/{grant_id}".encode()


def _access_to_json(access: Access, keys: KeyRing, aad: bytes) -> dict[str, Any]:
    location = access.location
    method = access.method
    described: dict[str, Any]
    if isinstance(method, LocalPath):
        described = {"local": {"path": method.path}}
    elif isinstance(method, PresignedUrls):
        # Signed URLs are bearer credentials: sealed whole.
        urls = {
            "endpoint": method.endpoint,
            "bucket": method.bucket,
            "prefix": method.prefix,
            "objects": [[o.key, o.size_bytes, o.etag, o.url] for o in method.objects],
            "post_url": method.post_url,
            "post_fields": [list(pair) for pair in method.post_fields],
            "expire_ms": method.expire_ms,
        }
        described = {"presigned": {"sealed": keys.seal(json.dumps(urls).encode(), aad)}}
    else:
        secret = {
            "access_key_id": method.access_key_id,
            "secret_access_key": method.secret_access_key,
            "session_token": method.session_token,
        }
        described = {
            "s3": {
                "endpoint": method.endpoint,
                "region": method.region,
                "bucket": method.bucket,
                "prefix": method.prefix,
                "expire_ms": method.expire_ms,
                "sealed": keys.seal(json.dumps(secret).encode(), aad),
            }
        }
    return {
        "location": {"connection": location.connection, "bucket": location.bucket, "prefix": location.prefix},
        "mode": access.mode.value,
        "method": described,
    }


def _access_from_json(data: dict[str, Any], keys: KeyRing, aad: bytes) -> Access:
    location = data["location"]
    method = data["method"]
    opened: LocalPath | S3Credentials | PresignedUrls
    if "local" in method:
        opened = LocalPath(method["local"]["path"])
    elif "presigned" in method:
        urls = json.loads(keys.open(method["presigned"]["sealed"], aad))
        opened = PresignedUrls(
            endpoint=urls["endpoint"],
            bucket=urls["bucket"],
            prefix=urls["prefix"],
            objects=tuple(PresignedObject(*entry) for entry in urls["objects"]),
            post_url=urls["post_url"],
            post_fields=tuple((name, value) for name, value in urls["post_fields"]),
            expire_ms=urls["expire_ms"],
        )
    else:
        s3 = method["s3"]
        secret = json.loads(keys.open(s3["sealed"], aad))
        opened = S3Credentials(
            endpoint=s3["endpoint"],
            region=s3["region"],
            bucket=s3["bucket"],
            prefix=s3["prefix"],
            access_key_id=secret["access_key_id"],
            secret_access_key=secret["secret_access_key"],
            session_token=secret["session_token"],
            expire_ms=s3["expire_ms"],
        )
    return Access(
        location=Location(location["connection"], location["bucket"], location["prefix"]),
        mode=AccessMode(data["mode"]),
        method=opened,
    )


def _to_domain(row: GrantRow, keys: KeyRing) -> Grant:
    aad = _grant_aad(row.account, row.id)
    return Grant(
        id=row.id,
        account=row.account,
        run=row.run or "",
        accesses=tuple(_access_from_json(access, keys, aad) for access in row.accesses),
        expire_ms=row.expire_ms,
        revoke_ms=row.revoke_ms,
        request_id=row.request_id or "",
        created_ms=row.created_ms,
        run_token_sha256=row.run_token_sha256 or "",
    )


def _to_row(grant: Grant, keys: KeyRing) -> GrantRow:
    aad = _grant_aad(grant.account, grant.id)
    return GrantRow(
        id=grant.id,
        account=grant.account,
        run=grant.run or None,
        accesses=[_access_to_json(access, keys, aad) for access in grant.accesses],
        expire_ms=grant.expire_ms,
        revoke_ms=grant.revoke_ms,
        request_id=grant.request_id or None,
        created_ms=grant.created_ms,
        run_token_sha256=grant.run_token_sha256 or None,
    )


class SqlGrantRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], keys: KeyRing):
        self._sessions = sessions
        self._keys = keys

    async def get(self, account: str, grant_id: str) -> Grant | None:
        async with self._sessions() as session:
            row = await session.scalar(select(GrantRow).where(GrantRow.account == account, GrantRow.id == grant_id))
            return _to_domain(row, self._keys) if row else None

    async def find_by_request_id(self, account: str, request_id: str) -> Grant | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(GrantRow).where(GrantRow.account == account, GrantRow.request_id == request_id)
            )
            return _to_domain(row, self._keys) if row else None

    async def insert(self, grant: Grant) -> Grant:
        try:
            async with self._sessions() as session, session.begin():
                session.add(_to_row(grant, self._keys))
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
            return _to_domain(row, self._keys) if row else None

    async def renew(self, grant: Grant) -> bool:
        aad = _grant_aad(grant.account, grant.id)
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(GrantRow)
                .where(GrantRow.account == grant.account, GrantRow.id == grant.id, GrantRow.revoke_ms.is_(None))
                .values(accesses=[_access_to_json(access, self._keys, aad) for access in grant.accesses])
            )
            return bool(getattr(result, "rowcount", 0))


def _connection_to_domain(row: ConnectionRow, keys: KeyRing) -> Connection:
    secret = json.loads(keys.open(row.credentials, _connection_aad(row.account, row.id)))
    return Connection(
        account=row.account,
        id=row.id,
        endpoint=row.endpoint,
        region=row.region,
        access_key_id=secret["access_key_id"],
        secret_access_key=secret["secret_access_key"],
        create_ms=row.create_ms,
        request_id=row.request_id or "",
        presigned_urls=bool(row.presigned_urls),
    )


class SqlConnectionRepository:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], keys: KeyRing):
        self._sessions = sessions
        self._keys = keys

    async def get(self, account: str, connection_id: str) -> Connection | None:
        async with self._sessions() as session:
            row = await session.get(ConnectionRow, (account, connection_id))
            return _connection_to_domain(row, self._keys) if row else None

    async def find_by_request_id(self, account: str, request_id: str) -> Connection | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(ConnectionRow).where(ConnectionRow.account == account, ConnectionRow.request_id == request_id)
            )
            return _connection_to_domain(row, self._keys) if row else None

    async def insert(self, connection: Connection) -> Connection | None:
        secret = {"access_key_id": connection.access_key_id, "secret_access_key": connection.secret_access_key}
        row = ConnectionRow(
            account=connection.account,
            id=connection.id,
            endpoint=connection.endpoint,
            region=connection.region,
            credentials=self._keys.seal(
                json.dumps(secret).encode(), _connection_aad(connection.account, connection.id)
            ),
            access_key_hint=connection.access_key_hint,
            request_id=connection.request_id or None,
            create_ms=connection.create_ms,
            presigned_urls=connection.presigned_urls,
        )
        try:
            async with self._sessions() as session, session.begin():
                session.add(row)
        except IntegrityError:
            return None
        return connection

    async def list(self, account: str, offset: int, limit: int) -> tuple[list[Connection], bool]:
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(ConnectionRow)
                    .where(ConnectionRow.account == account)
                    .order_by(ConnectionRow.id)
                    .offset(offset)
                    .limit(limit + 1)
                )
            ).all()
        return [_connection_to_domain(row, self._keys) for row in rows[:limit]], len(rows) > limit

    async def replace_secret(self, connection: Connection) -> bool:
        secret = {"access_key_id": connection.access_key_id, "secret_access_key": connection.secret_access_key}
        sealed = self._keys.seal(json.dumps(secret).encode(), _connection_aad(connection.account, connection.id))
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(ConnectionRow)
                .where(ConnectionRow.account == connection.account, ConnectionRow.id == connection.id)
                .values(credentials=sealed)
            )
            return bool(getattr(result, "rowcount", 0))

    async def delete(self, account: str, connection_id: str) -> bool:
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                delete(ConnectionRow).where(ConnectionRow.account == account, ConnectionRow.id == connection_id)
            )
            return bool(getattr(result, "rowcount", 0))


async def rotate_keys(sessions: async_sessionmaker[AsyncSession], keys: KeyRing) -> int:
    """Re-seals every secret not under the key ring's current key; how many rows were rewritten.

    Run after making a new key current and keeping the old one as a previous key; once it
    returns, the old key may be dropped.
    """
    rewritten = 0
    async with sessions() as session, session.begin():
        for connection in (await session.scalars(select(ConnectionRow))).all():
            if not keys.is_current(connection.credentials):
                aad = _connection_aad(connection.account, connection.id)
                connection.credentials = keys.seal(keys.open(connection.credentials, aad), aad)
                rewritten += 1
        for grant in (await session.scalars(select(GrantRow))).all():
            aad = _grant_aad(grant.account, grant.id)
            changed = False
            accesses = []
            for access in grant.accesses:
                for kind in ("s3", "presigned"):
                    sealed = access["method"].get(kind)
                    if sealed is not None and not keys.is_current(sealed["sealed"]):
                        resealed = {**sealed, "sealed": keys.seal(keys.open(sealed["sealed"], aad), aad)}
                        access = {**access, "method": {kind: resealed}}
                        changed = True
                accesses.append(access)
            if changed:
                grant.accesses = accesses
                rewritten += 1
    return rewritten
