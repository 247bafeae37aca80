"""Calls between our services: each carries the platform's service token.

Internal services (scheduler, storage, metering) refuse every call without it, except the few
methods a runner calls with its run token (those check the token themselves). The gateway
authenticates people with API keys instead (services/api_gateway/api/auth.py) and passes the
account it authenticated along in the `x-dlaas-account` header, for the logs.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from dlaas.credentials import ACCOUNT, SERVICE_TOKEN
from services.common.errors import Unauthenticated
from services.common.logs import bind_account
from services.common.server import Guard
from services.common.settings import ServiceSettings


class MissingServiceToken(RuntimeError):
    pass


def require_token(settings: ServiceSettings, service: str) -> bytes:
    if settings.service_token is None or not settings.service_token.get_secret_value():
        raise MissingServiceToken(
            f"{service}: DLAAS_SERVICE_TOKEN is not set; every service of a platform needs the same one "
            "(`dlaas up` makes it; in Kubernetes it comes from the dlaas-service-token Secret)"
        )
    return settings.service_token.get_secret_value().encode()


def header(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


def service_guard(settings: ServiceSettings, service: str, open_methods: frozenset[str] = frozenset()) -> Guard:
    """Refuses calls without the service token; `open_methods` (full method names) check their own.
    Under mutual TLS, a call without a verified client certificate (the plaintext port) may use
    `open_methods` only."""
    expected = require_token(settings, service)
    mutual_tls = settings.credentials().tls is not None

    async def guard(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if method in open_methods:
            return
        if mutual_tls and not context.auth_context().get("x509_pem_cert"):
            raise Unauthenticated(
                f"{service} serves only runners' callbacks without a client certificate",
                reason="CLIENT_CERTIFICATE_REQUIRED",
            )
        if not hmac.compare_digest(header(context, SERVICE_TOKEN).encode(), expected):
            raise Unauthenticated(
                f"{service} takes calls from dlaas services only: the service credential is missing or wrong",
                reason="SERVICE_CREDENTIAL_INVALID",
            )
        bind_account(header(context, ACCOUNT))

    return guard
