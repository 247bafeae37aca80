"""An account's S3-compatible store (Ceph RGW, MinIO, AWS S3, IBM COS), reached with its connection's keys.

A connection marked `presigned_urls` (a store without STS) gets presigned URLs instead: a
signed GET per object under a READ location (listed when the grant is issued) and a POST
policy that accepts keys under a WRITE location's prefix only; both expire with the grant and
cannot be revoked early (short of rotating the connection's keys).

Grants are STS credentials. For each grant the broker creates a role of its own on the store
(`dlaas-grant-<grant id>`) whose permission policy allows exactly the grant's locations and
modes until the grant's expiry (an `aws:CurrentTime` condition, since STS will not issue
credentials shorter than 15 minutes), then assumes it with the same policy inline as the
session policy. Revoking deletes the role's policy and the role: credentials issued for it
stop working at once, since the store evaluates the role's policy on every request.

One set of credentials (a session) lasts at most `session_s` (STS allows 12 h): its session
policy carries its own, earlier, `aws:CurrentTime` limit, and the runner renews (RenewGrant)
before it is reached. Issuing again for the same grant reuses the grant's role.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import logging
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from minio import Minio
from minio.datatypes import PostPolicy
from minio.error import S3Error

from dlaas.transfer_s3 import CRC_METADATA
from services.common.errors import FailedPrecondition
from services.common.timeutil import now_ms
from services.storage.adapters import aws_query
from services.storage.domain.connections import DEFAULT_REGION
from services.storage.domain.model import (
    AccessMethod,
    AccessMode,
    Connection,
    Location,
    ObjectMeta,
    ObjectPage,
    PresignedObject,
    PresignedUrls,
    Purge,
    S3Credentials,
    under_folder,
)

log = logging.getLogger(__name__)

ROLE_PREFIX = "dlaas-grant-"
POLICY_NAME = "grant"
# STS limits on AssumeRole's DurationSeconds.
MIN_SESSION_S = 900
MAX_SESSION_S = 43200
# SigV4 presigned URLs last at most 7 days.
MAX_PRESIGN_S = 7 * 86400
MAX_PRESIGNED_OBJECTS = 10_000
_READ_ACTIONS = ["s3:GetObject"]
_WRITE_ACTIONS = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]


def _keys_under(prefix: str) -> list[str]:
    """Key patterns a prefix covers: everything for "", else the key itself and what lies below it."""
    if not prefix:
        return ["*"]
    if prefix.endswith("/"):
        return [prefix + "*"]
    return [prefix, prefix + "/*"]


def grant_policy(accesses: Sequence[tuple[Location, AccessMode]], expire_ms: int) -> str:
    """The IAM policy of a grant: its locations in their modes, until `expire_ms`."""
    until = datetime.datetime.fromtimestamp(expire_ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    in_time = {"DateLessThan": {"aws:CurrentTime": until}}
    statements: list[dict[str, Any]] = []
    for location, mode in accesses:
        patterns = _keys_under(location.prefix)
        write = mode is AccessMode.WRITE
        statements.append(
            {
                "Effect": "Allow",
                "Action": _WRITE_ACTIONS if write else _READ_ACTIONS,
                "Resource": [f"arn:aws:s3:::{location.bucket}/{pattern}" for pattern in patterns],
                "Condition": in_time,
            }
        )
        statements.append(
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{location.bucket}"],
                "Condition": {**in_time, "StringLike": {"s3:prefix": patterns}},
            }
        )
    # Stores refuse policies with spaces in them.
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))


_TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": ["*"]}, "Action": ["sts:AssumeRole"]}],
    },
    separators=(",", ":"),
)


class S3ObjectStore:
    def __init__(self, connection: Connection, *, session_s: int = MAX_SESSION_S):
        self._connection = connection
        self._session_s = session_s
        self._region = connection.region or DEFAULT_REGION
        split = urlsplit(connection.endpoint)
        self._client = Minio(
            split.netloc,
            access_key=connection.access_key_id,
            secret_key=connection.secret_access_key,
            secure=split.scheme == "https",
            region=self._region,
        )

    # --- grants ------------------------------------------------------------------------------

    async def grant(
        self, account: str, grant_id: str, accesses: Sequence[tuple[Location, AccessMode]], expire_ms: int
    ) -> list[AccessMethod]:
        return await asyncio.to_thread(self._grant, grant_id, accesses, expire_ms)

    def _grant(
        self, grant_id: str, accesses: Sequence[tuple[Location, AccessMode]], expire_ms: int
    ) -> list[AccessMethod]:
        now = now_ms()
        # This session's end: the grant's, or sooner when the grant outlasts one session (renewed then).
        session_ms = min(expire_ms, now + self._session_s * 1000)
        if self._connection.presigned_urls:
            return [self._presigned(location, mode, session_ms) for location, mode in accesses]
        policy = grant_policy(accesses, expire_ms)
        role = ROLE_PREFIX + grant_id
        duration = min(MAX_SESSION_S, max(MIN_SESSION_S, -(-(session_ms - now) // 1000)))
        try:
            try:
                created = self._query(
                    "iam",
                    {
                        "Action": "CreateRole",
                        "RoleName": role,
                        "Path": "/",
                        "AssumeRolePolicyDocument": _TRUST_POLICY,
                        "MaxSessionDuration": str(MAX_SESSION_S),
                    },
                )
                arn = aws_query.find_text(created, "Arn")
            except aws_query.QueryError as exc:
                if exc.code != "EntityAlreadyExists":
                    raise
                arn = aws_query.find_text(self._query("iam", {"Action": "GetRole", "RoleName": role}), "Arn")
            self._query(
                "iam",
                {"Action": "PutRolePolicy", "RoleName": role, "PolicyName": POLICY_NAME, "PolicyDocument": policy},
            )
            answer = self._query(
                "sts",
                {
                    "Action": "AssumeRole",
                    "Version": "2011-06-15",
                    "RoleArn": arn,
                    "RoleSessionName": grant_id[:32],
                    "Policy": grant_policy(accesses, session_ms),
                    "DurationSeconds": str(duration),
                },
            )
        except aws_query.QueryError as exc:
            raise FailedPrecondition(
                f"connection {self._connection.id}: the store refused to issue scoped credentials ({exc.code}); "
                "it needs STS AssumeRole and IAM roles (on Ceph RGW: rgw sts key, rgw s3 auth use sts, "
                "and the connection's user with caps roles=*)",
                reason="STORE_REFUSED_GRANT",
                metadata={"connection": self._connection.id, "code": exc.code},
            ) from None
        except OSError as exc:
            raise FailedPrecondition(
                f"connection {self._connection.id}: the store is unreachable: {exc.__class__.__name__}",
                reason="STORE_UNREACHABLE",
                metadata={"connection": self._connection.id},
            ) from None
        key_id = aws_query.find_text(answer, "AccessKeyId")
        secret = aws_query.find_text(answer, "SecretAccessKey")
        token = aws_query.find_text(answer, "SessionToken")
        return [
            S3Credentials(
                endpoint=self._connection.endpoint,
                region=self._region,
                bucket=location.bucket,
                prefix=location.prefix,
                access_key_id=key_id,
                secret_access_key=secret,
                session_token=token,
                expire_ms=session_ms,
            )
            for location, _ in accesses
        ]

    def _presigned(self, location: Location, mode: AccessMode, expire_ms: int) -> PresignedUrls:
        now = datetime.datetime.now(datetime.UTC)
        expires = datetime.datetime.fromtimestamp(expire_ms / 1000, datetime.UTC)
        lifetime = datetime.timedelta(
            seconds=max(1, min(MAX_PRESIGN_S, -(-(expire_ms - int(now.timestamp() * 1000)) // 1000)))
        )
        endpoint = self._connection.endpoint
        objects: list[PresignedObject] = []
        post_url, fields = "", {}
        try:
            if mode is AccessMode.READ:
                prefix = location.prefix
                under = prefix if not prefix or prefix.endswith("/") else prefix + "/"
                for item in self._client.list_objects(location.bucket, prefix=prefix or None, recursive=True):
                    key = item.object_name or ""
                    if key != prefix and not key.startswith(under):
                        continue
                    if len(objects) == MAX_PRESIGNED_OBJECTS:
                        raise FailedPrecondition(
                            f"{location.bucket}/{prefix} holds more than {MAX_PRESIGNED_OBJECTS} objects: too many "
                            "for presigned URLs",
                            reason="TOO_MANY_OBJECTS",
                        )
                    url = self._client.presigned_get_object(location.bucket, key, expires=lifetime)
                    objects.append(PresignedObject(key, item.size or 0, (item.etag or "").strip('"'), url))
            else:
                policy = PostPolicy(location.bucket, min(expires, now + datetime.timedelta(seconds=MAX_PRESIGN_S)))
                policy.add_starts_with_condition("key", location.prefix.rstrip("/") + "/" if location.prefix else "")
                # Any value, or none: the CRC32 our uploads store with what they write
                # (dlaas.transfer_s3.CRC_METADATA); the store refuses a field the policy does not name.
                policy.add_starts_with_condition("x-amz-meta-dlaas-crc32", "")
                fields = self._client.presigned_post_policy(policy)
                post_url = f"{endpoint}/{location.bucket}"
        except S3Error as exc:
            raise self._refused(exc) from None
        return PresignedUrls(
            endpoint=endpoint,
            bucket=location.bucket,
            prefix=location.prefix,
            objects=tuple(objects),
            post_url=post_url,
            post_fields=tuple(sorted(fields.items())),
            expire_ms=expire_ms,
        )

    async def revoke(self, account: str, grant_id: str) -> None:
        if self._connection.presigned_urls:
            return  # signed URLs cannot be taken back: they expire with the grant
        await asyncio.to_thread(self._revoke, grant_id)

    def _revoke(self, grant_id: str) -> None:
        role = ROLE_PREFIX + grant_id
        for params in (
            {"Action": "DeleteRolePolicy", "RoleName": role, "PolicyName": POLICY_NAME},
            {"Action": "DeleteRole", "RoleName": role},
        ):
            try:
                self._query("iam", params)
            except aws_query.QueryError as exc:
                if exc.code not in ("NoSuchEntity", "NoSuchEntityException"):
                    log.warning("revoking grant %s on connection %s: %s", grant_id, self._connection.id, exc.code)

    def _query(self, service: str, params: dict[str, str]) -> Any:
        return aws_query.call(
            self._connection.endpoint,
            self._region,
            self._connection.access_key_id,
            self._connection.secret_access_key,
            service,
            params,
        )

    # --- objects -----------------------------------------------------------------------------

    async def write_object(self, account: str, location: Location, data: bytes) -> ObjectMeta:
        return await asyncio.to_thread(self._write_object, location, data)

    def _write_object(self, location: Location, data: bytes) -> ObjectMeta:
        digest = hashlib.sha256(data).hexdigest()
        # The content's CRC32 as our uploads store it: downloads (the runner's of model code) check it.
        metadata: dict[str, str | list[str] | tuple[str]] = {"sha256": digest, CRC_METADATA: f"{zlib.crc32(data):08x}"}
        try:
            if not self._client.bucket_exists(location.bucket):
                self._client.make_bucket(location.bucket)
            self._client.put_object(location.bucket, location.prefix, io.BytesIO(data), len(data), metadata=metadata)
        except S3Error as exc:
            raise self._refused(exc) from None
        return ObjectMeta(location.bucket, location.prefix, len(data), digest, now_ms())

    async def list_objects(self, account: str, location: Location, offset: int, limit: int) -> ObjectPage:
        return await asyncio.to_thread(self._list_objects, location, offset, limit)

    def _list_objects(self, location: Location, offset: int, limit: int) -> ObjectPage:
        objects: list[ObjectMeta] = []
        try:
            listing = self._client.list_objects(location.bucket, prefix=location.prefix or None, recursive=True)
            for index, item in enumerate(listing):
                if index < offset:
                    continue
                if len(objects) == limit:
                    return ObjectPage(tuple(objects), more=True)
                modified = item.last_modified
                objects.append(
                    ObjectMeta(
                        bucket=location.bucket,
                        key=item.object_name or "",
                        size_bytes=item.size or 0,
                        # S3 listings carry no SHA-256; the ETag (MD5 or multipart digest) is no substitute.
                        sha256="",
                        update_ms=int(modified.timestamp() * 1000) if modified else 0,
                    )
                )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return ObjectPage((), more=False)
            raise self._refused(exc) from None
        return ObjectPage(tuple(objects), more=False)

    async def purge_objects(self, account: str, location: Location, force: bool) -> Purge:
        return await asyncio.to_thread(self._purge_objects, location, force)

    def _purge_objects(self, location: Location, force: bool) -> Purge:
        from minio.deleteobjects import DeleteObject

        try:
            keys = [
                item.object_name or ""
                for item in self._client.list_objects(location.bucket, prefix=location.prefix or None, recursive=True)
                if under_folder(location.prefix, item.object_name or "")
            ]
            if force:
                for start in range(0, len(keys), 1000):
                    batch = [DeleteObject(key) for key in keys[start : start + 1000]]
                    errors = list(self._client.remove_objects(location.bucket, batch))
                    if errors:
                        raise FailedPrecondition(
                            f"connection {self._connection.id}: the store refused to delete "
                            f"{len(errors)} object(s) ({errors[0].code})",
                            reason="STORE_REFUSED",
                            metadata={"connection": self._connection.id, "code": str(errors[0].code)},
                        )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return Purge(0, ())
            raise self._refused(exc) from None
        return Purge(len(keys), tuple(keys[:100]))

    def _refused(self, exc: S3Error) -> FailedPrecondition:
        return FailedPrecondition(
            f"connection {self._connection.id}: the store answered {exc.code}",
            reason="STORE_REFUSED",
            metadata={"connection": self._connection.id, "code": str(exc.code)},
        )
