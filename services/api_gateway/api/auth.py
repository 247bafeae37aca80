"""Who is calling: every public RPC authenticates an API key and acts as the key's account.

The gateway's guard (run by the common interceptor before each method, in the call's task)
authenticates the `authorization` header and puts the caller in a context variable; servicers
ask `authenticate(context)` for it. AdminService and account administration need an admin key.
"""

from __future__ import annotations

import contextvars
from typing import Any

import grpc

from dlaas.credentials import ACCOUNT, AUTHORIZATION
from services.api_gateway.runtime.accounts import Accounts, Caller
from services.common.auth import header
from services.common.logs import bind_account
from services.common.server import Guard

__all__ = ["Caller", "authenticate", "caller_headers", "gateway_guard"]

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("dlaas_caller", default=None)
_ADMIN_SERVICE = "/dlaas.gateway.v1.AdminService/"
_ADMIN_METHODS = frozenset(
    {"/dlaas.gateway.v1.AccountService/CreateAccount", "/dlaas.gateway.v1.AccountService/ListAccounts"}
)


def gateway_guard(accounts: Accounts) -> Guard:
    async def guard(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        caller = await accounts.authenticate(header(context, AUTHORIZATION))
        if method.startswith(_ADMIN_SERVICE) or method in _ADMIN_METHODS:
            accounts.require_admin(caller)
        _caller.set(caller)
        bind_account(caller.account)

    return guard


def authenticate(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The caller the guard authenticated for this call."""
    caller = _caller.get()
    if caller is None:  # pragma: no cover - every method of ours runs behind the guard
        raise RuntimeError("no authenticated caller: the method ran outside the gateway's guard")
    return caller


def caller_headers() -> list[tuple[str, str]]:
    """The account this call acts for, carried to internal services for their logs."""
    caller = _caller.get()
    return [(ACCOUNT, caller.account)] if caller is not None else []
