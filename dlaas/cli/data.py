"""Data in the object store: upload, ls; and the transfer with a progress bar that download uses too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from dlaas.cli.app import OUTPUT, cli

_S3_NOT_YET = (
    "this location is on an S3 connection: `dlaas data` and `dlaas download` reach the platform's own store "
    "only for now; use the store's own tools (runs read and write it themselves)"
)


def transfer_tree(source: Path, target: Path, label: str) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from dlaas import transfer

    if label.startswith("download") and not source.is_absolute():
        # A grant on the local store is an absolute path; anything else is a grant on an S3 connection.
        raise click.ClickException(_S3_NOT_YET)
    if not source.is_dir():
        raise click.ClickException(f"nothing to {label}: {source} does not exist")
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=not sys.stderr.isatty(), disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(label, total=total)
        try:
            stats = transfer.copy_tree(source, target, verify=True, on_bytes=lambda n: progress.advance(task, n))
        except transfer.TransferError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{label}: {stats.files} file(s), {stats.bytes} bytes to {target}"
        + (f" ({stats.skipped} already there)" if stats.skipped else "")
    )


@cli.group()
def data() -> None:
    """Your data in the object store."""


def _location(dest: str) -> Any:
    from dlaas.types.v1 import run_pb2

    bucket, _, prefix = dest.partition("/")
    return run_pb2.ObjectLocation(bucket=bucket, prefix=prefix.strip("/"))


@data.command("upload")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest")
def data_upload(directory: Path, dest: str) -> None:
    """Upload DIRECTORY to BUCKET[/PREFIX]; files already there (same size and checksum) are skipped."""
    import grpc

    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        grant = stub().CreateDataGrant(
            gateway_pb2.CreateDataGrantRequest(location=_location(dest), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE)
        )
    except grpc.RpcError as exc:
        fail(exc)
    if not grant.HasField("local"):
        raise click.ClickException(_S3_NOT_YET)
    transfer_tree(directory, Path(grant.local.path), f"upload to {dest}")


@data.command("ls")
@click.argument("location")
@OUTPUT
def data_ls(location: str, output: str) -> None:
    """List objects under BUCKET[/PREFIX]."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        response = stub().ListObjects(gateway_pb2.ListObjectsRequest(location=_location(location)))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(response)
        return
    render.table(
        ["KEY", "SIZE", "SHA256", "UPDATED"],
        [[o.key, o.size_bytes, o.sha256[:12], render.when(o.update_time)] for o in response.objects],
    )
