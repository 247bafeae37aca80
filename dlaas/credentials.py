"""Credentials on gRPC calls: headers added to every call of a channel.

One way for every client: the CLI and the runner (API keys), our services (the service token),
tests and benchmarks. The value of a header is never logged or shown.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import grpc

AUTHORIZATION = "authorization"
SERVICE_TOKEN = "x-dlaas-service-token"  # noqa: S105 - the header name, not a secret
# The account the gateway authenticated, carried to internal services for their logs.
ACCOUNT = "x-dlaas-account"

Headers = Callable[[], Sequence[tuple[str, str]]]

KEY_PREFIX = "dlaas_"


def new_api_key() -> tuple[str, str]:
    """A new API key as (prefix, whole key): `dlaas_<8 hex digits>_<43 URL-safe characters>`."""
    prefix = KEY_PREFIX + secrets.token_hex(4)
    return prefix, f"{prefix}_{secrets.token_urlsafe(32)}"


def bearer(key: str) -> Headers:
    value = f"Bearer {key}"
    return lambda: ((AUTHORIZATION, value),)


class _AioHeaders:
    def __init__(self, headers: Headers, wait_for_ready: bool | None):
        self._headers = headers
        self._wait = wait_for_ready

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._headers())
        wait = details.wait_for_ready if details.wait_for_ready is not None else self._wait
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials, wait)


# grpc.aio files an interceptor under the first kind it is an instance of: one class per kind.
class _AioUnaryUnary(_AioHeaders, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStream(_AioHeaders, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnary(_AioHeaders, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AioStreamStream(_AioHeaders, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


# The blocking stack takes any object with these fields as the details of a call.
_Details = collections.namedtuple(
    "_Details", ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]
)


class _SyncHeaders(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, headers: Headers):
        self._headers = headers

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), *self._headers()]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


class _CallDetails(_Details, grpc.ClientCallDetails):
    pass


def aio_interceptors(headers: Headers, wait_for_ready: bool | None = None) -> list[grpc.aio.ClientInterceptor]:
    """`wait_for_ready`: calls wait (within their deadline) for a peer that is down or restarting,
    instead of failing at once with UNAVAILABLE."""
    kinds = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    return [kind(headers, wait_for_ready) for kind in kinds]


def with_headers(channel: grpc.Channel, headers: Headers) -> grpc.Channel:
    """A blocking channel whose every call carries `headers`."""
    return grpc.intercept_channel(channel, _SyncHeaders(headers))
