"""Object-store connections: `dlaas connections add|ls|rm`.

The secret key is read from a prompt (hidden) or from the environment variable named by
--secret-key-env, never from the command line, where it would land in shell history and `ps`.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import click

from dlaas.cli.app import OUTPUT, cli


def _stub() -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import connections_pb2_grpc

    return connections_pb2_grpc.ConnectionServiceStub(channel())


@cli.group()
def connections() -> None:
    """S3-compatible object stores that manifests name with `connection:`."""


@connections.command("add")
@click.argument("name")
@click.option("--endpoint", required=True, help="Base URL of the store, http(s)://host[:port].")
@click.option("--region", default="", help="Signing region (default us-east-1).")
@click.option("--access-key", required=True, help="Access key id.")
@click.option(
    "--secret-key-env",
    metavar="VAR",
    default="",
    help="Read the secret key from this environment variable instead of a prompt.",
)
@click.option(
    "--presigned-urls",
    is_flag=True,
    help="The store has no STS: give runs presigned URLs (they expire but cannot be revoked early).",
)
@OUTPUT
def connections_add(
    name: str, endpoint: str, region: str, access_key: str, secret_key_env: str, presigned_urls: bool, output: str
) -> None:
    """Register the store NAME; its secret key is encrypted by the platform and never shown again."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import connections_pb2

    if secret_key_env:
        secret = os.environ.get(secret_key_env, "")
        if not secret:
            raise click.ClickException(f"environment variable {secret_key_env} is empty or not set")
    else:
        secret = click.prompt("Secret key", hide_input=True)
    try:
        created = _stub().CreateConnection(
            connections_pb2.CreateConnectionRequest(
                connection_id=name,
                connection=connections_pb2.Connection(
                    endpoint=endpoint,
                    region=region,
                    access_key_id=access_key,
                    secret_access_key=secret,
                    presigned_urls=presigned_urls,
                ),
                request_id=uuid.uuid4().hex,
            )
        )
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(created)
        return
    click.echo(f"{created.name.rsplit('/', 1)[-1]}: {created.endpoint} (key {created.access_key_hint})")


@connections.command("ls")
@OUTPUT
def connections_ls(output: str) -> None:
    """Your connections (never their secrets)."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import connections_pb2

    found = []
    token = ""
    try:
        while True:
            page = _stub().ListConnections(connections_pb2.ListConnectionsRequest(page_size=100, page_token=token))
            found.extend(page.connections)
            token = page.next_page_token
            if not token:
                break
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json({"connections": [render.to_dict(c) for c in found]})
        return
    render.table(
        ["NAME", "ENDPOINT", "REGION", "KEY", "GRANTS", "CREATED"],
        [
            [
                c.name.rsplit("/", 1)[-1],
                c.endpoint,
                c.region or "-",
                c.access_key_hint,
                "presigned URLs" if c.presigned_urls else "STS",
                render.when(c.create_time),
            ]
            for c in found
        ],
    )


@connections.command("rm")
@click.argument("name")
def connections_rm(name: str) -> None:
    """Forget the connection NAME and its credentials."""
    import grpc

    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import connections_pb2

    try:
        _stub().DeleteConnection(connections_pb2.DeleteConnectionRequest(name=name))
    except grpc.RpcError as exc:
        fail(exc)
    click.echo(f"removed {name}")
