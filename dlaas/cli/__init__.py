"""dlaas: the command line of the deep-learning training service.

Heavy imports (grpc, protobuf, rich) happen inside the commands, so `dlaas --help` is instant.
"""

from __future__ import annotations

import io
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

import click

OUTPUT = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dlaas")
def cli() -> None:
    """Train deep-learning models on the GPUs your account may use.

    \b
    Start the platform on this machine:   dlaas up
    Upload training data:                 dlaas data upload ./data my-bucket
    Submit a run:                         dlaas train manifest.yml --code ./model
    Follow it:                            dlaas logs RUN -f
    Get its results:                      dlaas download RUN

    The platform address comes from DLAAS_ENDPOINT, or from the platform `dlaas up` started
    under DLAAS_HOME (default ~/.dlaas).
    """


# ---- the platform -----------------------------------------------------------------------


@cli.command()
def up() -> None:
    """Start the four services on this machine (data under DLAAS_HOME)."""
    from dlaas import platform

    try:
        started = platform.up()
    except platform.PlatformError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"dlaas is up in {platform.home()}; gateway at {started['api_gateway'].address}")


@cli.command()
def down() -> None:
    """Stop the services started by `dlaas up` (runs' runners keep going)."""
    from dlaas import platform

    stopped = platform.down()
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@cli.command()
@OUTPUT
def status(output: str) -> None:
    """Show the services of the local platform and whether they answer."""
    from dlaas import platform
    from dlaas.cli import render
    from dlaas.procs import alive

    state = platform.read_state()
    rows = [
        {
            "service": p.name,
            "pid": p.pid,
            "address": p.address,
            "metrics": f"http://127.0.0.1:{p.metrics_port}/metrics",
            "state": "serving" if alive(p.pid) and platform.healthy(p.address) else "down",
        }
        for p in state.values()
    ]
    if output == "json":
        render.emit_json({"home": str(platform.home()), "services": rows})
    elif not rows:
        click.echo(f"dlaas is not running (home {platform.home()}); start it with `dlaas up`")
    else:
        render.table(["SERVICE", "PID", "ADDRESS", "METRICS", "STATE"], [list(r.values()) for r in rows])
    if rows and any(r["state"] != "serving" for r in rows):
        sys.exit(1)


# ---- runs --------------------------------------------------------------------------------


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
    """Download a run's results and logs."""
    import grpc

    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        grant = stub().CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=run))
    except grpc.RpcError as exc:
        fail(exc)
    target = target or Path(run.rsplit("/", 1)[-1])
    _transfer(Path(grant.local.path), target, f"download {run}")


def _transfer(source: Path, target: Path, label: str) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    from dlaas import transfer

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


@cli.command()
@click.option("--run", default="", help="Only this run.")
@OUTPUT
def usage(run: str, output: str) -> None:
    """GPU time billed to your account, per run attempt (from GPU assignment to upload finished)."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    try:
        response = stub().ListUsageRecords(gateway_pb2.ListUsageRecordsRequest(run=run, page_size=1000))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(response)
        return
    rows = [
        [
            r.run.rsplit("/", 1)[-1],
            r.attempt,
            r.gpus,
            r.gpu_type,
            render.when(r.start_time),
            "accruing" if r.accruing else render.when(r.end_time),
            render.seconds(r.gpu_milliseconds),
        ]
        for r in response.usage_records
    ]
    render.table(["RUN", "ATTEMPT", "GPUS", "GPU TYPE", "ASSIGNED", "UPLOAD FINISHED", "GPU-SECONDS"], rows)
    click.echo(f"total GPU-seconds: {render.seconds(response.total_gpu_milliseconds)}")


# ---- data --------------------------------------------------------------------------------


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
    _transfer(directory, Path(grant.local.path), f"upload to {dest}")


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


def main() -> None:
    cli(prog_name="dlaas")


__all__ = ["cli", "main"]
