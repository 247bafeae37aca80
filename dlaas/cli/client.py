"""The CLI's connection to the gateway, and the rendering of gRPC errors for people."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click
import grpc

from dlaas import platform
from dlaas.gateway.v1 import gateway_pb2_grpc


def channel() -> grpc.Channel:
    """A channel to the gateway: DLAAS_ENDPOINT, or the platform `dlaas up` started."""
    address = platform.gateway_address()
    if not address:
        raise click.ClickException("the platform is not running here: start it with `dlaas up` (or set DLAAS_ENDPOINT)")
    return grpc.insecure_channel(
        address,
        options=[("grpc.max_send_message_length", 80 << 20), ("grpc.max_receive_message_length", 80 << 20)],
    )


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
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                lines += [f"  {v.field or '(manifest)'}: {v.description}" for v in bad.field_violations]
    click.echo("\n".join(lines), err=True)
    sys.exit(1)
