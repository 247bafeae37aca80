"""What the broker needs from the outside world: object stores, a grant ledger, a connection registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.storage.domain.model import (
    AccessMethod,
    AccessMode,
    Connection,
    Grant,
    Location,
    ObjectMeta,
    ObjectPage,
    Purge,
)


class ObjectStore(Protocol):
    """One object store: the platform's local directory, or an account's S3-compatible store.

    Every call is scoped to `account`: a store keeps each account's buckets apart, so no
    location of one account can reach another's. Locations arrive validated.
    """

    async def grant(
        self, account: str, grant_id: str, accesses: Sequence[tuple[Location, AccessMode]], expire_ms: int
    ) -> list[AccessMethod]:
        """How the holder of grant `grant_id` reaches each location, in order, until `expire_ms`.

        For WRITE the location is made ready to write.
        """
        ...

    async def revoke(self, account: str, grant_id: str) -> None:
        """Makes what `grant` handed out for `grant_id` stop working, where the store can."""
        ...

    async def write_object(self, account: str, location: Location, data: bytes) -> ObjectMeta:
        """Writes `data` at key `location.prefix`, atomically: readers see the old or the new bytes."""
        ...

    async def list_objects(self, account: str, location: Location, offset: int, limit: int) -> ObjectPage:
        """Objects whose key starts with `location.prefix`, in key order, from the `offset`-th on.

        A bucket that does not exist holds no objects.
        """
        ...

    async def purge_objects(self, account: str, location: Location, force: bool) -> Purge:
        """Deletes (with `force`; else only counts) the objects under `location.prefix` as a folder."""
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

    async def renew(self, grant: Grant) -> bool:
        """Stores `grant`'s (renewed) accesses, unless it was revoked meanwhile; whether it stored them."""
        ...


class ConnectionRepository(Protocol):
    async def get(self, account: str, connection_id: str) -> Connection | None: ...

    async def find_by_request_id(self, account: str, request_id: str) -> Connection | None: ...

    async def insert(self, connection: Connection) -> Connection | None:
        """Stores `connection`; None when the account already has one with its id or request_id."""
        ...

    async def list(self, account: str, offset: int, limit: int) -> tuple[list[Connection], bool]:
        """The account's connections by id from the `offset`-th on, and whether more follow."""
        ...

    async def delete(self, account: str, connection_id: str) -> bool: ...

    async def replace_secret(self, connection: Connection) -> bool:
        """Stores `connection`'s secret in place of the one kept for its (account, id); whether it existed."""
        ...
