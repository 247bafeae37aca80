"""The broker's use cases: issue and revoke grants, register connections, write and list objects."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.pagination import decode_token, encode_token, page_size
from services.storage.domain.connections import (
    CreateConnection,
    parse_connection_name,
)
from services.storage.domain.connections import (
    validate_create as check_connection,
)
from services.storage.domain.grants import (
    CreateGrant,
    account_or_violation,
    expire_ms,
    parse_grant_name,
    raise_if_any,
    token_matches,
    validate_create,
)
from services.storage.domain.locations import location_violations
from services.storage.domain.model import (
    PLATFORM_CONNECTION,
    Access,
    AccessMode,
    Connection,
    Grant,
    Location,
    ObjectMeta,
    Purge,
)
from services.storage.domain.ports import ConnectionRepository, GrantRepository, ObjectStore

log = logging.getLogger(__name__)

MAX_OBJECT_BYTES = 64 * 1024 * 1024
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000


MAX_CONNECTIONS_PAGE = 100
PURGE_SAMPLE = 100


@dataclass(frozen=True)
class ObjectListing:
    objects: tuple[ObjectMeta, ...]
    next_page_token: str


@dataclass(frozen=True)
class ConnectionListing:
    connections: tuple[Connection, ...]
    next_page_token: str


class StorageBroker:
    def __init__(
        self,
        grants: GrantRepository,
        platform_store: ObjectStore,
        *,
        max_grant_ttl_s: int,
        clock: Callable[[], int],
        connections: ConnectionRepository | None = None,
        open_store: Callable[[Connection], ObjectStore] | None = None,
    ):
        self._grants = grants
        self._platform_store = platform_store
        self._connections = connections
        self._open_store = open_store
        self._max_grant_ttl_s = max_grant_ttl_s
        self._clock = clock

    async def store_for(self, account: str, connection: str) -> ObjectStore:
        if connection == PLATFORM_CONNECTION:
            return self._platform_store
        found = None
        if self._connections is not None and self._open_store is not None:
            found = await self._connections.get(account, connection)
        if found is None or self._open_store is None:
            raise FailedPrecondition(
                f"connection {connection[:80]} is not registered",
                reason="CONNECTION_NOT_FOUND",
                metadata={"connection": connection[:200]},
            )
        return self._open_store(found)

    # --- connections -----------------------------------------------------------------------

    async def create_connection(self, request: CreateConnection) -> Connection:
        account = check_connection(request)
        repo = self._require_connections()
        if request.request_id:
            earlier = await repo.find_by_request_id(account, request.request_id)
            if earlier is not None:
                return earlier
        connection = Connection(
            account=account,
            id=request.connection_id,
            endpoint=request.endpoint.rstrip("/"),
            region=request.region,
            access_key_id=request.access_key_id,
            secret_access_key=request.secret_access_key,
            create_ms=self._clock(),
            request_id=request.request_id,
            presigned_urls=request.presigned_urls,
        )
        stored = await repo.insert(connection)
        if stored is None:
            earlier = await repo.find_by_request_id(account, request.request_id) if request.request_id else None
            if earlier is not None:
                return earlier
            existing = await repo.get(account, connection.id) if request.replace_secret else None
            if existing is not None and _same_store(existing, connection):
                if existing.secret_access_key == connection.secret_access_key:
                    return existing
                # A rotated secret for the same store and key: it replaces the one kept.
                updated = replace(existing, secret_access_key=connection.secret_access_key)
                await repo.replace_secret(updated)
                log.info("connection %s: secret replaced", connection.name)
                return updated
            raise AlreadyExists(f"connection {connection.name} already exists", metadata={"name": connection.name})
        return stored

    async def list_connections(self, parent: str, requested_page_size: int, page_token: str) -> ConnectionListing:
        violations: list[FieldViolation] = []
        account = account_or_violation(parent, violations)
        raise_if_any(violations)
        limit = page_size(requested_page_size, default=MAX_CONNECTIONS_PAGE, maximum=MAX_CONNECTIONS_PAGE)
        offset = decode_token(page_token, account)
        found, more = await self._require_connections().list(account, offset, limit)
        return ConnectionListing(tuple(found), encode_token(offset + len(found), account) if more else "")

    async def delete_connection(self, name: str) -> None:
        account, connection_id = parse_connection_name(name)
        if not await self._require_connections().delete(account, connection_id):
            raise NotFound(f"connection {name} not found", metadata={"name": name})

    def _require_connections(self) -> ConnectionRepository:
        if self._connections is None:
            raise FailedPrecondition("this storage service keeps no connections", reason="CONNECTIONS_DISABLED")
        return self._connections

    async def create_grant(self, request: CreateGrant) -> Grant:
        valid = validate_create(request, self._max_grant_ttl_s)
        if valid.request_id:
            # A retry gets the first answer, even if a connection has gone since.
            earlier = await self._grants.find_by_request_id(valid.account, valid.request_id)
            if earlier is not None:
                return earlier
        # Every connection is resolved before any store is touched: a refused request leaves nothing behind.
        by_connection: dict[str, list[int]] = {}
        for index, (location, _) in enumerate(valid.accesses):
            by_connection.setdefault(location.connection, []).append(index)
        stores = {name: await self.store_for(valid.account, name) for name in by_connection}
        now = self._clock()
        grant_id = uuid.uuid4().hex
        expires = expire_ms(now, valid.ttl_ms)
        methods: dict[int, Access] = {}
        for name, indices in by_connection.items():
            asked: list[tuple[Location, AccessMode]] = [valid.accesses[i] for i in indices]
            issued = await stores[name].grant(valid.account, grant_id, asked, expires)
            for index, method in zip(indices, issued, strict=True):
                location, mode = valid.accesses[index]
                methods[index] = Access(location, mode, method)
        grant = Grant(
            id=grant_id,
            account=valid.account,
            run=valid.run,
            accesses=tuple(methods[i] for i in range(len(valid.accesses))),
            expire_ms=expires,
            revoke_ms=None,
            request_id=valid.request_id,
            created_ms=now,
            run_token_sha256=valid.run_token_sha256,
        )
        return await self._grants.insert(grant)

    async def revoke_grant(self, name: str) -> Grant:
        account, grant_id = parse_grant_name(name)
        grant = await self._grants.revoke(account, grant_id, self._clock())
        if grant is None:
            raise NotFound(f"grant {name} not found", metadata={"name": name})
        for connection in sorted({access.location.connection for access in grant.accesses}):
            try:
                store = await self.store_for(account, connection)
            except FailedPrecondition:
                # The connection is gone: what it handed out expires on its own.
                log.warning("grant %s: connection %s is gone; its access expires on its own", name, connection)
                continue
            await store.revoke(account, grant_id)
        return grant

    async def renew_grant(self, name: str, run_token: str) -> Grant:
        """Fresh credentials for a live grant, for its run's runner (proved by the run token)."""
        account, grant_id = parse_grant_name(name)
        if not run_token:
            raise InvalidArgument.field("run_token", "is required")
        grant = await self._grants.get(account, grant_id)
        # An unknown grant and a wrong token answer alike: the caller learns nothing about other grants.
        if grant is None or not token_matches(run_token, grant.run_token_sha256):
            raise PermissionDenied("the run token does not renew this grant", reason="RUN_TOKEN_INVALID")
        now = self._clock()
        if grant.revoke_ms is not None:
            raise FailedPrecondition(f"grant {name} was revoked: its run ended", reason="GRANT_REVOKED")
        if grant.expire_ms <= now:
            raise FailedPrecondition(f"grant {name} has expired", reason="GRANT_EXPIRED")
        by_connection: dict[str, list[int]] = {}
        for index, access in enumerate(grant.accesses):
            by_connection.setdefault(access.location.connection, []).append(index)
        methods = list(grant.accesses)
        for connection, indices in by_connection.items():
            store = await self.store_for(account, connection)
            asked = [(grant.accesses[i].location, grant.accesses[i].mode) for i in indices]
            issued = await store.grant(account, grant_id, asked, grant.expire_ms)
            for index, method in zip(indices, issued, strict=True):
                methods[index] = Access(grant.accesses[index].location, grant.accesses[index].mode, method)
        renewed = replace(grant, accesses=tuple(methods))
        if not await self._grants.renew(renewed):
            # Revoked while we renewed: what the store just issued must stop working too.
            for connection in by_connection:
                await (await self.store_for(account, connection)).revoke(account, grant_id)
            raise FailedPrecondition(f"grant {name} was revoked: its run ended", reason="GRANT_REVOKED")
        return renewed

    async def purge_objects(self, parent: str, location: Location | None, force: bool) -> Purge:
        violations: list[FieldViolation] = []
        account = account_or_violation(parent, violations)
        violations.extend(location_violations(location, "location"))
        raise_if_any(violations)
        assert location is not None
        store = await self.store_for(account, location.connection)
        purged = await store.purge_objects(account, location, force)
        if force:
            log.info("purged %d objects under %s/%s", purged.count, location.bucket, location.prefix)
        return purged

    async def write_object(self, parent: str, location: Location | None, data: bytes) -> ObjectMeta:
        violations: list[FieldViolation] = []
        account = account_or_violation(parent, violations)
        violations.extend(location_violations(location, "location", is_key=True))
        if len(data) > MAX_OBJECT_BYTES:
            violations.append(FieldViolation("data", f"must be at most {MAX_OBJECT_BYTES} bytes, got {len(data)}"))
        raise_if_any(violations)
        assert location is not None
        return await (await self.store_for(account, location.connection)).write_object(account, location, data)

    async def list_objects(
        self, parent: str, location: Location | None, requested_page_size: int, page_token: str
    ) -> ObjectListing:
        violations: list[FieldViolation] = []
        account = account_or_violation(parent, violations)
        violations.extend(location_violations(location, "location"))
        raise_if_any(violations)
        assert location is not None
        limit = page_size(requested_page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        query = "\n".join([account, location.connection, location.bucket, location.prefix])
        offset = decode_token(page_token, query)
        store = await self.store_for(account, location.connection)
        page = await store.list_objects(account, location, offset, limit)
        next_token = encode_token(offset + len(page.objects), query) if page.more else ""
        return ObjectListing(page.objects, next_token)


def _same_store(a: Connection, b: Connection) -> bool:
    return (a.endpoint, a.access_key_id, a.region, a.presigned_urls) == (
        b.endpoint,
        b.access_key_id,
        b.region,
        b.presigned_urls,
    )
