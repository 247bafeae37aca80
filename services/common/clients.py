"""Channels to other services: traced where tracing is on (context carried on every hop), with our message limits,
carrying the platform's service token on every call, over mutual TLS where it is configured."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from dlaas.credentials import SERVICE_TOKEN, Headers, aio_interceptors
from services.common.server import CHANNEL_OPTIONS
from services.common.settings import ServiceCredentials
from services.common.telemetry import tracing_on


def open_channel(address: str, credentials: ServiceCredentials, extra: Headers | None = None) -> grpc.aio.Channel:
    """A channel to one of our services. `extra` adds headers per call (the gateway's caller)."""
    secret = credentials.token.get_secret_value() if credentials.token is not None else ""

    def headers() -> list[tuple[str, str]]:
        return [(SERVICE_TOKEN, secret), *(extra() if extra else ())]

    # Calls between our services ride out a peer's restart (kill -9 and back) within their deadline.
    tracing = aio_client_interceptors() if tracing_on() else []  # type: ignore[no-untyped-call]
    interceptors = [*tracing, *aio_interceptors(headers, wait_for_ready=True)]
    if credentials.tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
    cert, key, ca = credentials.tls.read()
    tls = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.aio.secure_channel(address, tls, options=CHANNEL_OPTIONS, interceptors=interceptors)
