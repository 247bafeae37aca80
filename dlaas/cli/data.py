"""Data in the object store: upload, ls, rm; and the transfers with a progress bar that download uses too.

Whatever the store, the CLI moves bytes with a grant the gateway asks the storage service for: a
path on the platform's local store, temporary S3 credentials scoped to the location, or presigned
URLs. It never sees a connection's own keys.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from dlaas.cli.app import OUTPUT, cli

CONNECTION = click.option(
    "--connection",
    default="",
    metavar="NAME",
    help="A registered S3 connection (`dlaas connections ls`); default: the platform's own store.",
)


@contextmanager
def progress_bar(label: str, total: int | None) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A rich progress bar when stderr is a terminal (bytes, rate, time left); (advance, set_total)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    # On stderr, so that stdout keeps only the result (`dlaas data upload … > log` still shows progress).
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(label, total=total)
        yield (lambda n: progress.advance(task, n)), (lambda n: progress.update(task, total=n))


def _summary(label: str, stats: Any, target: str) -> str:
    notes = [f"{stats.skipped} already there"] if stats.skipped else []
    if stats.resumed:
        notes.append(f"{stats.resumed} resumed from an earlier attempt")
    return f"{label}: {stats.files} file(s), {stats.bytes} bytes to {target}" + (
        f" ({', '.join(notes)})" if notes else ""
    )


def transfer_tree(source: Path, target: Path, label: str) -> None:
    """A tree of files between this machine and the platform's local store, verified."""
    from dlaas import transfer

    if not source.is_dir():
        raise click.ClickException(f"nothing to {label}: {source} does not exist")
    total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    with progress_bar(label, total) as (advance, _):
        try:
            stats = transfer.copy_tree(source, target, verify=True, on_bytes=advance)
        except transfer.TransferError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(_summary(label, stats, str(target)))


def s3_location(grant: Any) -> Any:
    """The transfers' S3Location for a DataGrant on an S3 connection (credentials or presigned URLs)."""
    from dlaas.transfer_s3 import PresignedGet, S3Location

    expire_ms = grant.expire_time.ToMilliseconds()
    if grant.HasField("presigned"):
        signed = grant.presigned
        return S3Location(
            endpoint=signed.endpoint,
            region="",
            bucket=signed.bucket,
            prefix=signed.prefix,
            expire_ms=expire_ms,
            presigned=True,
            objects=tuple(PresignedGet(o.key, o.size_bytes, o.etag, o.url) for o in signed.objects),
            post_url=signed.post_url,
            post_fields=tuple(sorted(signed.post_fields.items())),
        )
    s3 = grant.s3
    return S3Location(
        endpoint=s3.endpoint,
        region=s3.region,
        bucket=s3.bucket,
        prefix=s3.prefix,
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        session_token=s3.session_token,
        expire_ms=expire_ms,
    )


class RenewingGrant:
    """A CLI transfer's grant on an S3 connection, asked for again as it nears its end: temporary
    credentials last one STS session (an hour by default) and a grant an hour, less than a large
    transfer may take. minio asks `__call__` before every request, from any worker thread: the
    renewed credentials serve the requests that follow. Presigned URLs cannot be renewed under a
    transfer: those grants last their hour."""

    def __init__(self, ask: Callable[[], Any], clock: Callable[[], float] = time.time):
        self._ask = ask
        self._clock = clock
        self._lock = threading.Lock()
        self.grant = ask()
        self.renewal_error: Exception | None = None
        self._issued_s = clock()
        self._next_try_s = 0.0

    @property
    def location(self) -> Any:
        return s3_location(self.grant)

    def __call__(self) -> Any:
        with self._lock:
            expire_s = self.grant.expire_time.ToMilliseconds() / 1000
            # Renewed with a fifth of its life left (at most five minutes before its end); after a
            # failed try, asked again at most every RENEW_RETRY_S (the current one serves till its end).
            margin_s = min(RENEW_MARGIN_S, (expire_s - self._issued_s) / 5)
            now = self._clock()
            if now >= expire_s - margin_s and now >= self._next_try_s:
                try:
                    self.grant, self._issued_s = self._ask(), self._clock()
                    self.renewal_error = None
                except Exception as exc:  # noqa: BLE001 - `failure` tells why, if the transfer then fails
                    self.renewal_error = exc
                    self._next_try_s = self._clock() + min(RENEW_RETRY_S, margin_s / 4)
            return s3_location(self.grant)

    def failure(self, exc: Exception) -> click.ClickException:
        """What the CLI says of a transfer that failed, with why the grant was not renewed, if it was not."""
        why = f" (the grant could not be renewed: {self.renewal_error})" if self.renewal_error else ""
        return click.ClickException(f"{exc}{why}")


RENEW_MARGIN_S = 300
RENEW_RETRY_S = 30
# What one grant request may take: workers wait on a renewal.
GRANT_TIMEOUT_S = 30


def upload_to_grant(directory: Path, grant: RenewingGrant, label: str) -> None:
    """DIRECTORY to the grant's location: parallel (multipart for large files), verified, skipping
    files there; on an S3 connection, the grant is asked for again while the upload lasts."""
    from dlaas import transfer, transfer_s3

    if grant.grant.HasField("local"):
        transfer_tree(directory, Path(grant.grant.local.path), label)
        return
    location = grant.location
    total = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    with progress_bar(label, total) as (advance, _):
        try:
            stats = transfer_s3.upload_tree(directory, location, on_bytes=advance, fresh=grant)
        except transfer.TransferError as exc:
            raise grant.failure(exc) from exc
    click.echo(_summary(label, stats, f"{location.bucket}/{location.prefix}".rstrip("/")))


def download_from_grant(grant: RenewingGrant, target: Path, label: str) -> None:
    """Everything under the grant's location into TARGET: parallel ranged GETs, verified,
    resumable; on an S3 connection, the grant is asked for again while the download lasts."""
    from dlaas import transfer, transfer_s3

    if grant.grant.HasField("local"):
        transfer_tree(Path(grant.grant.local.path), target, label)
        return
    with progress_bar(label, None) as (advance, set_total):
        try:
            stats = transfer_s3.download_prefix(
                grant.location, target, on_bytes=advance, on_total=set_total, fresh=grant
            )
        except transfer.TransferError as exc:
            raise grant.failure(exc) from exc
    click.echo(_summary(label, stats, str(target)))


def download_file_from_grant(grant: RenewingGrant, target: Path, label: str) -> None:
    """The single object a grant names (its location's prefix is the key) to the file TARGET."""
    from dlaas import transfer, transfer_s3

    with progress_bar(label, None) as (advance, _):
        try:
            if grant.grant.HasField("local"):
                stats = transfer.copy_file(Path(grant.grant.local.path), target, verify=True, on_bytes=advance)
            else:
                location = grant.location
                stats = transfer_s3.download_object(location, location.prefix, target, on_bytes=advance, fresh=grant)
        except transfer.TransferError as exc:
            raise grant.failure(exc) from exc
    click.echo(f"{label}: {stats.bytes or target.stat().st_size} bytes to {target}")


@cli.group()
def data() -> None:
    """Your data in the object store (the platform's, or an S3 connection's with --connection)."""


def _location(dest: str, connection: str = "") -> Any:
    from dlaas.types.v1 import run_pb2

    bucket, _, prefix = dest.partition("/")
    return run_pb2.ObjectLocation(connection=connection, bucket=bucket, prefix=prefix.strip("/"))


@data.command("upload")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dest")
@CONNECTION
def data_upload(directory: Path, dest: str, connection: str) -> None:
    """Upload DIRECTORY to BUCKET[/PREFIX]: in parallel, large files in parts, each verified; files
    already there with the same size and checksum are skipped, and a large file an earlier run of
    this command (on this machine) left half-sent resumes with the parts it had not sent."""
    import grpc

    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    client = stub()

    def ask() -> Any:
        request = gateway_pb2.CreateDataGrantRequest(
            location=_location(dest, connection), mode=gateway_pb2.DATA_ACCESS_MODE_WRITE
        )
        return client.CreateDataGrant(request, timeout=GRANT_TIMEOUT_S)

    try:
        grant = RenewingGrant(ask)
    except grpc.RpcError as exc:
        fail(exc)
    upload_to_grant(directory, grant, f"upload to {dest}")


@data.command("ls")
@click.argument("location")
@CONNECTION
@OUTPUT
def data_ls(location: str, connection: str, output: str) -> None:
    """List objects under BUCKET[/PREFIX]."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    objects: list[Any] = []
    page_token = ""
    try:
        while True:
            response = stub().ListObjects(
                gateway_pb2.ListObjectsRequest(location=_location(location, connection), page_token=page_token)
            )
            objects.extend(response.objects)
            page_token = response.next_page_token
            if not page_token:
                break
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(gateway_pb2.ListObjectsResponse(objects=objects))
        return
    render.table(
        ["KEY", "SIZE", "SHA256", "UPDATED"],
        [[o.key, o.size_bytes, o.sha256[:12], render.when(o.update_time)] for o in objects],
    )


@data.command("rm")
@click.argument("location")
@CONNECTION
@click.option("--yes", is_flag=True, help="Delete without asking (needed when not on a terminal).")
def data_rm(location: str, connection: str, yes: bool) -> None:
    """Delete every object under BUCKET[/PREFIX] ("data" covers data and data/…, not data-old/…)."""
    import grpc

    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    where = _location(location, connection)
    try:
        if not yes:
            counted = stub().PurgeObjects(gateway_pb2.PurgeObjectsRequest(location=where, force=False))
            if not counted.purge_count:
                click.echo(f"nothing under {location}")
                return
            shown = "\n".join(f"  {key}" for key in counted.purge_sample[:10])
            more = counted.purge_count - min(10, len(counted.purge_sample))
            click.echo(
                f"{counted.purge_count} object(s) under {location}:\n{shown}"
                + (f"\n  … {more} more" if more > 0 else "")
            )
            if not sys.stdin.isatty():
                raise click.ClickException("not deleted: pass --yes to delete without asking")
            click.confirm(f"Delete these {counted.purge_count} object(s)?", abort=True)
        purged = stub().PurgeObjects(gateway_pb2.PurgeObjectsRequest(location=where, force=True))
    except grpc.RpcError as exc:
        fail(exc)
    click.echo(f"deleted {purged.purge_count} object(s) under {location}")
