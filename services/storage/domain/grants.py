"""Rules for grants: what a request must say, how long a grant lasts, whose it is."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

from services.common.errors import FieldViolation, InvalidArgument
from services.common.names import parse_account, parse_run
from services.storage.domain.locations import location_violations
from services.storage.domain.model import AccessMode, AccessRequest, Location

MAX_REQUEST_ID_CHARS = 128
MAX_ACCESSES = 100

_ID = r"[a-z0-9][a-z0-9-]{0,62}"
_GRANT_NAME = re.compile(rf"^accounts/({_ID})/grants/({_ID})$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CreateGrant:
    """A CreateGrant request as the caller sent it; ttl_ms None when the caller gave no ttl."""

    parent: str
    run: str
    accesses: tuple[AccessRequest, ...]
    ttl_ms: int | None
    request_id: str
    run_token_sha256: str = field(default="", repr=False)


@dataclass(frozen=True)
class ValidGrantRequest:
    account: str
    run: str
    accesses: tuple[tuple[Location, AccessMode], ...]
    ttl_ms: int
    request_id: str
    run_token_sha256: str = field(default="", repr=False)


def raise_if_any(violations: list[FieldViolation]) -> None:
    if violations:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations)
        raise InvalidArgument(message, violations)


def account_or_violation(parent: str, violations: list[FieldViolation], field: str = "parent") -> str:
    """The account of `parent`, or "" with the problem appended to `violations`."""
    try:
        return parse_account(parent, field)
    except InvalidArgument as exc:
        violations.extend(exc.violations)
        return ""


def ttl_violations(ttl_ms: int | None, max_ttl_s: int, field: str = "ttl") -> list[FieldViolation]:
    if ttl_ms is None:
        return [FieldViolation(field, "is required")]
    if ttl_ms <= 0:
        return [FieldViolation(field, "must be positive (at least 1ms)")]
    if ttl_ms > max_ttl_s * 1000:
        return [FieldViolation(field, f"must be at most {max_ttl_s}s")]
    return []


def expire_ms(now_ms: int, ttl_ms: int) -> int:
    return now_ms + ttl_ms


def validate_create(request: CreateGrant, max_ttl_s: int) -> ValidGrantRequest:
    """Every problem of the request at once, as field violations; else its checked form."""
    violations: list[FieldViolation] = []
    account = account_or_violation(request.parent, violations)
    if request.run:
        try:
            run_account, _ = parse_run(request.run, "run")
        except InvalidArgument as exc:
            violations.extend(exc.violations)
        else:
            if account and run_account != account:
                violations.append(FieldViolation("run", f"must be a run of {request.parent}"))
    if not request.accesses:
        violations.append(FieldViolation("accesses", "must name at least one location"))
    elif len(request.accesses) > MAX_ACCESSES:
        violations.append(FieldViolation("accesses", f"must name at most {MAX_ACCESSES} locations"))
    for index, access in enumerate(request.accesses):
        violations.extend(location_violations(access.location, f"accesses[{index}].location"))
        if access.mode is None:
            violations.append(FieldViolation(f"accesses[{index}].mode", "must be READ or WRITE"))
    violations.extend(ttl_violations(request.ttl_ms, max_ttl_s))
    if request.run_token_sha256:
        if not _SHA256_HEX.match(request.run_token_sha256):
            violations.append(FieldViolation("run_token_sha256", "must be 64 lower-case hex digits"))
        elif not request.run:
            violations.append(FieldViolation("run_token_sha256", "needs run: only a run's grant is renewable"))
    if len(request.request_id) > MAX_REQUEST_ID_CHARS:
        violations.append(FieldViolation("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters"))
    raise_if_any(violations)
    assert request.ttl_ms is not None
    checked = tuple(
        (access.location, access.mode)
        for access in request.accesses
        if access.location is not None and access.mode is not None
    )
    return ValidGrantRequest(
        account, request.run, checked, request.ttl_ms, request.request_id, request.run_token_sha256
    )


def token_matches(run_token: str, run_token_sha256: str) -> bool:
    """Whether `run_token` is the token whose SHA-256 the grant holds (in constant time)."""
    if not run_token or not run_token_sha256:
        return False
    return hmac.compare_digest(hashlib.sha256(run_token.encode()).hexdigest(), run_token_sha256)


def parse_grant_name(name: str, field: str = "name") -> tuple[str, str]:
    """(account, grant id) of accounts/{account}/grants/{grant}."""
    match = _GRANT_NAME.match(name)
    if not match:
        raise InvalidArgument.field(field, f"must look like accounts/{{account}}/grants/{{grant}}, got {name[:80]!r}")
    return match.group(1), match.group(2)
