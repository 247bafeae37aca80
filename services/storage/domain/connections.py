"""Rules for connections: what a registration must say, what a connection name looks like."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from services.common.errors import FieldViolation, InvalidArgument
from services.storage.domain.grants import MAX_REQUEST_ID_CHARS, account_or_violation, raise_if_any

_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_CONNECTION_NAME = re.compile(r"^accounts/([a-z0-9][a-z0-9-]{0,62})/connections/([a-z0-9][a-z0-9-]{0,62})$")
_REGION = re.compile(r"^[a-z0-9-]{0,63}$")
MAX_KEY_CHARS = 256
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class CreateConnection:
    parent: str
    connection_id: str
    endpoint: str
    region: str
    access_key_id: str = dataclasses.field(repr=False)
    secret_access_key: str = dataclasses.field(repr=False)
    request_id: str
    presigned_urls: bool = False
    # A connection with this id, endpoint and access key gets this secret in place of its own.
    replace_secret: bool = False


def validate_create(request: CreateConnection) -> str:
    """The account of a valid request; every problem at once otherwise (never echoing a key)."""
    violations: list[FieldViolation] = []
    account = account_or_violation(request.parent, violations)
    if not _ID.match(request.connection_id):
        violations.append(FieldViolation("connection_id", "must be 1-63 lower-case letters, digits or '-'"))
    violations.extend(endpoint_violations(request.endpoint, "connection.endpoint"))
    if not _REGION.match(request.region):
        violations.append(FieldViolation("connection.region", "must be lower-case letters, digits or '-'"))
    for field, value in (
        ("connection.access_key_id", request.access_key_id),
        ("connection.secret_access_key", request.secret_access_key),
    ):
        if not value:
            violations.append(FieldViolation(field, "is required"))
        elif len(value) > MAX_KEY_CHARS or any(ch.isspace() or not ch.isprintable() for ch in value):
            violations.append(FieldViolation(field, f"must be up to {MAX_KEY_CHARS} printable characters, no spaces"))
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        violations.append(FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters"))
    raise_if_any(violations)
    return account


def endpoint_violations(endpoint: str, field: str) -> list[FieldViolation]:
    if not endpoint:
        return [FieldViolation(field, "is required")]
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return [FieldViolation(field, "must be an http:// or https:// URL")]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [FieldViolation(field, "must be an http:// or https:// URL")]
    if parts.username or parts.password:
        return [FieldViolation(field, "must not carry credentials; give them as the access and secret keys")]
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return [FieldViolation(field, "must be the store's base URL, without a path")]
    return []


def parse_connection_name(name: str, field: str = "name") -> tuple[str, str]:
    """(account, connection id) of accounts/{account}/connections/{connection}."""
    match = _CONNECTION_NAME.match(name)
    if not match:
        raise InvalidArgument.field(
            field, f"must look like accounts/{{account}}/connections/{{connection}}, got {name[:80]!r}"
        )
    return match.group(1), match.group(2)
