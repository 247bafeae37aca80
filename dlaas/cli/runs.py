"""Runs: validate, train, list, show, logs, cancel, download."""

from __future__ import annotations

import io
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import click

from dlaas.cli.app import OUTPUT, cli
from dlaas.cli.data import GRANT_TIMEOUT_S, RenewingGrant, download_file_from_grant, download_from_grant


def _pack(code_dir: Path) -> bytes:
    """The model code as a gzipped tar, without caches and version-control folders."""
    if not code_dir.is_dir():
        raise click.BadParameter(f"{code_dir} is not a directory", param_hint="--code")
    skip = {"__pycache__", ".git", ".venv", "node_modules", ".ipynb_checkpoints"}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if set(Path(info.name).parts) & skip else info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(code_dir.iterdir()):
            tar.add(child, arcname=child.name, filter=keep)
    return buffer.getvalue()


def _read_manifest(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(str(exc), param_hint="MANIFEST") from exc


@cli.command()
@click.argument("manifest")
def validate(manifest: str) -> None:
    """Check a manifest (dlaas, FfDL or WML format); print it normalized as JSON, or every error."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        run = stub().CreateRun(gateway_pb2.CreateRunRequest(manifest=_read_manifest(manifest), validate_only=True))
    except grpc.RpcError as exc:
        fail(exc)
    render.emit_json(run.spec)


@cli.command()
@click.argument("manifest")
@click.option("--code", "code_dir", type=click.Path(path_type=Path), help="Directory of model code to send.")
@click.option("--request-id", default=None, help="Idempotency key (default: a new one).")
@click.option("-f", "--follow", is_flag=True, help="Follow the run's log until it ends.")
@OUTPUT
def train(manifest: str, code_dir: Path | None, request_id: str | None, follow: bool, output: str) -> None:
    """Submit a training run described by MANIFEST."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    request = gateway_pb2.CreateRunRequest(
        manifest=_read_manifest(manifest),
        code_archive=_pack(code_dir) if code_dir else b"",
        request_id=request_id or uuid.uuid4().hex,
    )
    try:
        run = stub().CreateRun(request)
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(run)
    else:
        click.echo(f"{run.name.rsplit('/', 1)[-1]} {render.state(run.status.state)}")
    if follow:
        _follow_logs(run.name)


@cli.command("list")
@click.option("--limit", default=50, show_default=True, help="At most this many runs.")
@OUTPUT
def list_runs(limit: int, output: str) -> None:
    """List your runs, newest first."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        response = stub().ListRuns(gateway_pb2.ListRunsRequest(page_size=limit))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(response)
        return
    rows = []
    for run in response.runs:
        status = run.status
        detail = status.wait_reason if status.queue_position else render.reason(status.termination_reason)
        rows.append(
            [
                run.name.rsplit("/", 1)[-1],
                run.spec.display_name,
                render.state(status.state),
                run.spec.resources.gpus,
                render.when(run.create_time),
                "" if detail == "UNSPECIFIED" else detail,
            ]
        )
    render.table(["RUN", "NAME", "STATE", "GPUS", "SUBMITTED", "DETAIL"], rows)


@cli.command()
@click.argument("run")
@click.option("-w", "--watch", is_flag=True, help="Print each state change until the run ends.")
@OUTPUT
def show(run: str, watch: bool, output: str) -> None:
    """Show a run: its states with their times, placement, exit code, log tail."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    client = stub()
    try:
        if watch:
            for update in client.WatchRun(gateway_pb2.WatchRunRequest(name=run)):
                if output == "json":
                    click.echo(_one_line_json(update))
                else:
                    click.echo(
                        f"{render.when(update.status.transitions[-1].time)}  {render.state(update.status.state)}"
                    )
            return
        found = client.GetRun(gateway_pb2.GetRunRequest(name=run))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(found)
        return
    _describe(found)


def _one_line_json(message: Any) -> str:
    import json

    from dlaas.cli import render

    return json.dumps(render.to_dict(message))


def _describe(run: Any) -> None:
    from dlaas.cli import render

    s, status = run.spec, run.status
    click.echo(f"Run:        {run.name}")
    click.echo(f"Name:       {s.display_name}")
    click.echo(f"Framework:  {s.framework.name} {s.framework.version}".rstrip())
    click.echo(f"Command:    {s.command}")
    click.echo(f"GPUs:       {s.resources.gpus}{' ' + s.resources.gpu_type if s.resources.gpu_type else ''}")
    click.echo(f"State:      {render.state(status.state)}")
    if status.queue_position:
        click.echo(f"Queue:      position {status.queue_position}: {status.wait_reason}")
    if status.placement.node:
        indices = ",".join(str(i) for i in status.placement.gpu_indices) or "-"
        click.echo(f"Placement:  {status.placement.node} ({status.placement.gpu_type}) GPUs {indices}")
    if status.termination_reason:
        click.echo(f"Ended:      {render.reason(status.termination_reason)}")
    if status.HasField("exit_code"):
        click.echo(f"Exit code:  {status.exit_code}")
    if status.message:
        click.echo(f"Message:    {status.message}")
    if status.HasField("results"):
        click.echo(f"Results:    {status.results.bucket}/{status.results.prefix}")
    click.echo("States:")
    for t in status.transitions:
        click.echo(f"  {render.when(t.time)}  {render.state(t.state)}")
    if status.log_tail:
        click.echo("Last log lines:")
        for line in status.log_tail:
            click.echo(f"  {line}")


def _follow_logs(name: str, follow: bool = True) -> None:
    import grpc

    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    out = sys.stdout.buffer
    try:
        for chunk in stub().StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name, follow=follow)):
            out.write(chunk.data)
            out.flush()
    except grpc.RpcError as exc:
        fail(exc)


@cli.command()
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the run ends.")
def logs(run: str, follow: bool) -> None:
    """Print a run's log (stdout and stderr of its command, and the runner's notes)."""
    _follow_logs(run, follow)


@cli.command()
@click.argument("run")
@OUTPUT
def cancel(run: str, output: str) -> None:
    """Cancel a run; what it wrote so far is uploaded."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        result = stub().CancelRun(gateway_pb2.CancelRunRequest(name=run, request_id=uuid.uuid4().hex))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(result)
    else:
        click.echo(f"{result.name.rsplit('/', 1)[-1]} {render.state(result.status.state)} (cancellation requested)")


@cli.command()
@click.argument("run")
@click.option("--to", "target", type=click.Path(path_type=Path), default=None, help="Directory (default ./RUN).")
def download(run: str, target: Path | None) -> None:
    """Download a run's results, its logs (under logs/) and the model code it was submitted with
    (code/model.tar.gz), from the platform's store or the run's S3 connection; a rerun fetches
    only what is missing or changed."""
    import grpc

    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    client = stub()
    try:
        results = RenewingGrant(
            lambda: client.CreateRunResultsGrant(
                gateway_pb2.CreateRunResultsGrantRequest(name=run), timeout=GRANT_TIMEOUT_S
            )
        )
    except grpc.RpcError as exc:
        fail(exc)
    target = target or Path(run.rsplit("/", 1)[-1])
    download_from_grant(results, target, f"download {run}")
    try:
        code = RenewingGrant(
            lambda: client.CreateRunCodeGrant(gateway_pb2.CreateRunCodeGrantRequest(name=run), timeout=GRANT_TIMEOUT_S)
        )
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            fail(exc)
        click.echo(f"{run} was submitted without model code")
        return
    download_file_from_grant(code, target / "code" / "model.tar.gz", "model code")
