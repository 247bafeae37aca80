"""Channels to other services: traced (context carried on every hop), with our message limits."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from services.common.server import CHANNEL_OPTIONS


def open_channel(address: str) -> grpc.aio.Channel:
    interceptors = aio_client_interceptors()  # type: ignore[no-untyped-call]
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
