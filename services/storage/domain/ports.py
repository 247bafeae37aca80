"""What the broker needs from the outside world: an object store per connection, a grant ledger."""

from __future__ import annotations

from typing import Protocol

from services.storage.domain.model import AccessMethod, AccessMode, Grant, Location, ObjectMeta, ObjectPage


class ObjectStore(Protocol):
    """One object store (the local directory now; S3-compatible stores later).

    Every call is scoped to `account`: a store keeps each account's buckets apart, so no
    location of one account can reach another's. Locations arrive validated.
    """

    async def grant_access(self, account: str, location: Location, mode: AccessMode) -> AccessMethod:
        """How the holder of a grant reaches `location`; for WRITE the location is made ready to write."""
        ...

    async def write_object(self, account: str, location: Location, data: bytes) -> ObjectMeta:
        """Writes `data` at key `location.prefix`, atomically: readers see the old or the new bytes."""
        ...

    async def list_objects(self, account: str, location: Location, offset: int, limit: int) -> ObjectPage:
        """Objects whose key starts with `location.prefix`, in key order, from the `offset`-th on.

        A bucket that does not exist holds no objects.
        """
        ...


class GrantRepository(Protocol):
    async def get(self, account: str, grant_id: str) -> Grant | None: ...

    async def find_by_request_id(self, account: str, request_id: str) -> Grant | None: ...

    async def insert(self, grant: Grant) -> Grant:
        """Stores `grant`; if the account already has a grant with its request_id, returns that one."""
        ...

    async def revoke(self, account: str, grant_id: str, now_ms: int) -> Grant | None:
        """Marks the grant revoked at `now_ms` (a revoked grant keeps its first revoke time)."""
        ...
