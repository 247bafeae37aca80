"""Resource names (AIP-122): accounts/{account}/runs/{run} and friends."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

_ID = r"[a-z0-9][a-z0-9-]{0,62}"
_ACCOUNT = re.compile(rf"^accounts/({_ID})$")
_RUN = re.compile(rf"^accounts/({_ID})/runs/({_ID})$")
_ID_ONLY = re.compile(rf"^{_ID}$")


def account_name(account: str) -> str:
    return f"accounts/{account}"


def run_name(account: str, run_id: str) -> str:
    return f"accounts/{account}/runs/{run_id}"


def parse_account(parent: str, field: str = "parent") -> str:
    match = _ACCOUNT.match(parent)
    if not match:
        raise InvalidArgument.field(field, f"must look like accounts/{{account}}, got {parent[:80]!r}")
    return match.group(1)


def parse_run(name: str, field: str = "name") -> tuple[str, str]:
    match = _RUN.match(name)
    if not match:
        raise InvalidArgument.field(field, f"must look like accounts/{{account}}/runs/{{run}}, got {name[:80]!r}")
    return match.group(1), match.group(2)


def is_id(value: str) -> bool:
    return bool(_ID_ONLY.match(value))
