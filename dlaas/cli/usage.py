"""GPU usage and billing."""

from __future__ import annotations

import click

from dlaas.cli.app import OUTPUT, cli


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
