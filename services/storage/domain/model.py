"""The broker's vocabulary: locations, access modes, grants, objects. Plain values, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class S3Credentials:
    """Access to a location on an S3-compatible store: temporary credentials scoped to it."""

    endpoint: str
    region: str
    bucket: str
    prefix: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expire_ms: int


@dataclass(frozen=True)
class PresignedObject:
    key: str
    size_bytes: int
    etag: str
    url: str = field(repr=False)


@dataclass(frozen=True)
class PresignedUrls:
    """Access to a location on a store without STS: signed GETs (READ) or a POST policy (WRITE)."""

    endpoint: str
    bucket: str
    prefix: str
    objects: tuple[PresignedObject, ...]
    post_url: str
    post_fields: tuple[tuple[str, str], ...] = field(repr=False)
    expire_ms: int


# How a location may be reached.
AccessMethod = LocalPath | S3Credentials | PresignedUrls


@dataclass(frozen=True)
class Connection:
    """An account's S3-compatible store. The keys are plaintext only in memory, never shown."""

    account: str
    id: str
    endpoint: str
    region: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    create_ms: int
    # Idempotency key; "" when the caller gave none.
    request_id: str = ""
    # The store offers no STS: grants are presigned URLs.
    presigned_urls: bool = False

    @property
    def name(self) -> str:
        return f"accounts/{self.account}/connections/{self.id}"

    @property
    def access_key_hint(self) -> str:
        return "…" + self.access_key_id[-4:]


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
    # SHA-256 (hex) of the run token that may renew the grant; "" when it is not renewable.
    run_token_sha256: str = field(default="", repr=False)

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


@dataclass(frozen=True)
class Purge:
    """What a purge deleted (or, without force, would delete): how many objects, and some of their keys."""

    count: int
    sample: tuple[str, ...]


def under_folder(prefix: str, key: str) -> bool:
    """Whether `key` lies under `prefix` taken as a folder: "data" covers "data" and "data/…", not "data-old"."""
    if not prefix:
        return True
    folder = prefix if prefix.endswith("/") else prefix + "/"
    return key == prefix.rstrip("/") or key.startswith(folder)


def grant_name(account: str, grant_id: str) -> str:
    return f"accounts/{account}/grants/{grant_id}"
