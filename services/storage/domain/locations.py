"""Which buckets, prefixes and keys a caller may name.

Bucket names follow S3's rules (3-63 characters; lowercase letters, digits, dots, hyphens; a
letter or digit at each end; no `..`; not an IP address), plus underscores, which FfDL's
historical container names use. Prefixes and keys are S3 keys that are also safe as relative
paths on a filesystem, normalized and checked by the rules of `dlaas.keys`: nothing that could
climb out of the bucket or be read two ways.
"""

from __future__ import annotations

import re
from dataclasses import replace

from dlaas import keys
from services.common.errors import FieldViolation
from services.storage.domain.model import Location

_BUCKET_CHARS = re.compile(r"^[a-z0-9._-]+$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def bucket_violations(bucket: str, field: str) -> list[FieldViolation]:
    def bad(description: str) -> list[FieldViolation]:
        return [FieldViolation(field, description)]

    if not bucket:
        return bad("is required")
    if not 3 <= len(bucket) <= 63:
        return bad(f"must be 3 to 63 characters long, got {len(bucket)}")
    if not _BUCKET_CHARS.match(bucket):
        return bad("may contain only lowercase letters, digits, dots, hyphens and underscores")
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return bad("must begin and end with a letter or digit")
    if ".." in bucket:
        return bad("must not contain two adjacent dots")
    if _IP_ADDRESS.match(bucket):
        return bad("must not look like an IP address")
    return []


def prefix_violations(prefix: str, field: str, *, is_key: bool = False) -> list[FieldViolation]:
    """Problems with a normalized key prefix (or, with `is_key`, a full object key)."""
    why = keys.problem(prefix, is_key=is_key)
    return [FieldViolation(field, why)] if why else []


def normalized(location: Location) -> Location:
    """`location` with its prefix in the one spelling of `dlaas.keys` (checked afterwards)."""
    return replace(location, prefix=keys.normalize(location.prefix))


def location_violations(location: Location | None, field: str, *, is_key: bool = False) -> list[FieldViolation]:
    if location is None:
        return [FieldViolation(field, "is required")]
    return [
        *bucket_violations(location.bucket, f"{field}.bucket"),
        *prefix_violations(location.prefix, f"{field}.prefix", is_key=is_key),
    ]


def prefix_parts(prefix: str) -> list[str]:
    """The path segments of a valid prefix ("" and "a/b/" give [] and ["a", "b"])."""
    return [segment for segment in prefix.split("/") if segment]
