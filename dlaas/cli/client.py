"""The CLI's connection to the gateway, and the rendering of gRPC errors for people."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc

from dlaas import config, platform
from dlaas.credentials import bearer, with_headers
from dlaas.gateway.v1 import gateway_pb2_grpc


def channel(admin: bool = False, key: str | None = None, address: str | None = None) -> grpc.Channel:
    """A channel to the gateway (DLAAS_ENDPOINT, the config file, or the platform `dlaas up`
    started) whose calls carry the API key (`admin`: the admin key; see dlaas.config)."""
    try:
        address = address or platform.gateway_address()
        key = key or config.api_key(admin)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not address:
        raise click.ClickException("the platform is not running here: start it with `dlaas up` (or set DLAAS_ENDPOINT)")
    if not key:
        raise click.ClickException(
            "no API key: set DLAAS_API_KEY, run `dlaas login`, or start the platform here with `dlaas up`"
        )
    options = [("grpc.max_send_message_length", 80 << 20), ("grpc.max_receive_message_length", 80 << 20)]
    if address.startswith("grpcs://"):  # TLS to the gateway (an ingress): the system's CAs, or DLAAS_CA_FILE
        ca = Path(os.environ["DLAAS_CA_FILE"]).read_bytes() if os.environ.get("DLAAS_CA_FILE") else None
        raw = grpc.secure_channel(address.removeprefix("grpcs://"), grpc.ssl_channel_credentials(ca), options)
    else:
        raw = grpc.insecure_channel(address.removeprefix("grpc://"), options)
    return with_headers(raw, bearer(key))


def stub() -> gateway_pb2_grpc.TrainingServiceStub:
    return gateway_pb2_grpc.TrainingServiceStub(channel())


def fail(error: grpc.RpcError) -> NoReturn:
    """Prints a gRPC error as the user should read it: the message, then every bad field."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    call: Any = error
    lines = [f"error: {call.code().name}: {call.details()}"]
    status = rpc_status.from_call(call)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                lines.append(f"  retry in {retry.retry_delay.ToMilliseconds() / 1000:.2f} s")
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                lines += [f"  {v.field or '(manifest)'}: {v.description}" for v in bad.field_violations]
    click.echo("\n".join(lines), err=True)
    sys.exit(1)
