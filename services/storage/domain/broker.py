"""The broker's use cases: issue and revoke grants, write and list objects."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, FieldViolation, NotFound
from services.common.pagination import decode_token, encode_token, page_size
from services.storage.domain.grants import (
    CreateGrant,
    account_or_violation,
    expire_ms,
    parse_grant_name,
    raise_if_any,
    validate_create,
)
from services.storage.domain.locations import location_violations
from services.storage.domain.model import Access, Grant, Location, ObjectMeta
from services.storage.domain.ports import GrantRepository, ObjectStore

MAX_OBJECT_BYTES = 64 * 1024 * 1024
DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class ObjectListing:
    objects: tuple[ObjectMeta, ...]
    next_page_token: str


class StorageBroker:
    def __init__(
        self,
        grants: GrantRepository,
        stores: Mapping[str, ObjectStore],
        *,
        max_grant_ttl_s: int,
        clock: Callable[[], int],
    ):
        self._grants = grants
        self._stores = dict(stores)
        self._max_grant_ttl_s = max_grant_ttl_s
        self._clock = clock

    def store_for(self, connection: str) -> ObjectStore:
        store = self._stores.get(connection)
        if store is None:
            # Inline connections of FfDL/WML manifests ("inline-…") land here too until they are registered.
            raise FailedPrecondition(
                f"connection {connection[:80]} is not registered",
                reason="CONNECTION_NOT_FOUND",
                metadata={"connection": connection[:200]},
            )
        return store

    async def create_grant(self, request: CreateGrant) -> Grant:
        valid = validate_create(request, self._max_grant_ttl_s)
        if valid.request_id:
            # A retry gets the first answer, even if a connection has gone since.
            earlier = await self._grants.find_by_request_id(valid.account, valid.request_id)
            if earlier is not None:
                return earlier
        # Every connection is resolved before any store is touched: a refused request leaves nothing behind.
        stores = [self.store_for(location.connection) for location, _ in valid.accesses]
        accesses = []
        for store, (location, mode) in zip(stores, valid.accesses, strict=True):
            method = await store.grant_access(valid.account, location, mode)
            accesses.append(Access(location, mode, method))
        now = self._clock()
        grant = Grant(
            id=uuid.uuid4().hex,
            account=valid.account,
            run=valid.run,
            accesses=tuple(accesses),
            expire_ms=expire_ms(now, valid.ttl_ms),
            revoke_ms=None,
            request_id=valid.request_id,
            created_ms=now,
        )
        return await self._grants.insert(grant)

    async def revoke_grant(self, name: str) -> Grant:
        account, grant_id = parse_grant_name(name)
        grant = await self._grants.revoke(account, grant_id, self._clock())
        if grant is None:
            raise NotFound(f"grant {name} not found", metadata={"name": name})
        return grant

    async def write_object(self, parent: str, location: Location | None, data: bytes) -> ObjectMeta:
        violations: list[FieldViolation] = []
        account = account_or_violation(parent, violations)
        violations.extend(location_violations(location, "location", is_key=True))
        if len(data) > MAX_OBJECT_BYTES:
            violations.append(FieldViolation("data", f"must be at most {MAX_OBJECT_BYTES} bytes, got {len(data)}"))
        raise_if_any(violations)
        assert location is not None
        return await self.store_for(location.connection).write_object(account, location, data)

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
        page = await self.store_for(location.connection).list_objects(account, location, offset, limit)
        next_token = encode_token(offset + len(page.objects), query) if page.more else ""
        return ObjectListing(page.objects, next_token)
