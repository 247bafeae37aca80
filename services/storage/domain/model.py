"""The broker's vocabulary: locations, access modes, grants, objects. Plain values, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The connection name of the platform's own store (ObjectLocation.connection == "").
PLATFORM_CONNECTION = ""


class AccessMode(enum.Enum):
    READ = "READ"
    # Write includes reading what the grant wrote.
    WRITE = "WRITE"


@dataclass(frozen=True)
class Location:
    """A bucket and a key prefix on a connection; for a single object the prefix is its full key."""

    connection: str
    bucket: str
    prefix: str


@dataclass(frozen=True)
class AccessRequest:
    """One entry of a grant request; None marks a field the caller left out."""

    location: Location | None
    mode: AccessMode | None


@dataclass(frozen=True)
class LocalPath:
    """Access to the local store: the absolute directory that holds the location's objects."""

    path: str


# How a location may be reached; S3 credentials join this union with the S3 store.
AccessMethod = LocalPath


@dataclass(frozen=True)
class Access:
    location: Location
    mode: AccessMode
    method: AccessMethod


@dataclass(frozen=True)
class Grant:
    id: str
    account: str
    # The run's resource name (accounts/{account}/runs/{run}); "" when issued for no run.
    run: str
    accesses: tuple[Access, ...]
    expire_ms: int
    revoke_ms: int | None
    # Idempotency key; "" when the caller gave none.
    request_id: str
    created_ms: int

    @property
    def name(self) -> str:
        return grant_name(self.account, self.id)


@dataclass(frozen=True)
class ObjectMeta:
    bucket: str
    key: str
    size_bytes: int
    sha256: str
    update_ms: int


@dataclass(frozen=True)
class ObjectPage:
    objects: tuple[ObjectMeta, ...]
    # Whether objects follow this page.
    more: bool


def grant_name(account: str, grant_id: str) -> str:
    return f"accounts/{account}/grants/{grant_id}"
