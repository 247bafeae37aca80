"""GPU usage and billing: `dlaas usage`, `dlaas invoice`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from dlaas.cli.app import cli

OUTPUT_FORMATS = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="A table for people; json or csv (exact milliseconds and micro-units) for scripts.",
)
_GROUPINGS = {"run": "USAGE_GROUPING_RUN", "gpu-type": "USAGE_GROUPING_GPU_TYPE", "day": "USAGE_GROUPING_DAY"}


def money(micros: int) -> str:
    """Millionths of the currency unit as an exact decimal: 1234567 → "1.234567"."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{fraction:06d}"


def _billing() -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import billing_pb2_grpc

    return billing_pb2_grpc.BillingServiceStub(channel())


def _csv(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows for scripts: exact integers (milliseconds, micro-units), ISO times, true/false."""
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([[str(v).lower() if isinstance(v, bool) else v for v in row] for row in rows])


def _iso(ts: Any, present: bool = True) -> str:
    return ts.ToJsonString() if present else ""


@cli.command()
@click.option("--period", default="", metavar="YYYY-MM", help="A UTC month: usage summed within it.")
@click.option(
    "--by",
    "group_by",
    type=click.Choice(list(_GROUPINGS)),
    default=None,
    help="Sum the month's usage per run, GPU type or UTC day (default with --period: run).",
)
@click.option("--run", default="", help="Only this run.")
@OUTPUT_FORMATS
def usage(period: str, group_by: str | None, run: str, output: str) -> None:
    """GPU time billed to your account, from GPU assignment until the results upload finished.

    \b
    Without --period or --by: a record per run attempt, with its times, and the total.
    With --period and/or --by: the month's GPU time and charge (current month by default),
    summed per run, GPU type or day. An interval crossing midnight or a month's end is split there.
    """
    if period or group_by:
        _summary(period, group_by or "run", run, output)
    else:
        _records(run, output)


def _records(run: str, output: str) -> None:
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import gateway_pb2

    records: list[Any] = []
    token = ""
    try:
        while True:
            response = stub().ListUsageRecords(
                gateway_pb2.ListUsageRecordsRequest(run=run, page_size=1000, page_token=token)
            )
            records += response.usage_records
            token = response.next_page_token
            if not token:
                break
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(
            {
                "usage_records": [render.to_dict(r) for r in records],
                "total_gpu_milliseconds": str(response.total_gpu_milliseconds),
            }
        )
        return
    if output == "csv":
        _csv(
            ["run", "attempt", "gpus", "gpu_type", "start_time", "end_time", "gpu_milliseconds", "accruing"],
            [
                [
                    r.run,
                    r.attempt,
                    r.gpus,
                    r.gpu_type,
                    _iso(r.start_time),
                    _iso(r.end_time, r.HasField("end_time")),
                    r.gpu_milliseconds,
                    r.accruing,
                ]
                for r in records
            ],
        )
        return
    headers = ["RUN", "ATTEMPT", "GPUS", "GPU TYPE", "ASSIGNED", "UPLOAD FINISHED", "GPU-SECONDS"]
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
        for r in records
    ]
    render.table(headers, rows)
    click.echo(f"total GPU-seconds: {render.seconds(response.total_gpu_milliseconds)}")


def _summary(period: str, group_by: str, run: str, output: str) -> None:
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import billing_pb2

    groups: list[Any] = []
    token = ""
    try:
        while True:
            response = _billing().SummarizeUsage(
                billing_pb2.SummarizeUsageRequest(
                    period=period,
                    group_by=billing_pb2.UsageGrouping.Value(_GROUPINGS[group_by]),
                    run=run,
                    page_size=1000,
                    page_token=token,
                )
            )
            groups += response.groups
            token = response.next_page_token
            if not token:
                break
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        whole = billing_pb2.SummarizeUsageResponse()
        whole.CopyFrom(response)
        del whole.groups[:]
        whole.groups.extend(groups)
        render.emit_json(whole)
        return
    if output == "csv":
        _csv(
            [group_by.replace("-", "_"), "attempts", "gpu_milliseconds", "amount_micros", "currency", "accruing"],
            [
                [
                    g.key,
                    g.attempt_count,
                    g.gpu_milliseconds,
                    g.amount_micros,
                    response.currency_code,
                    str(g.accruing).lower(),
                ]
                for g in groups
            ],
        )
        return
    key_header = {"run": "RUN", "gpu-type": "GPU TYPE", "day": "DAY"}[group_by]
    headers = [key_header, "ATTEMPTS", "GPU-SECONDS", f"AMOUNT ({response.currency_code})", "ACCRUING"]
    rows = [
        [
            g.key.rsplit("/", 1)[-1] if group_by == "run" else g.key,
            g.attempt_count,
            render.seconds(g.gpu_milliseconds),
            money(g.amount_micros),
            "yes" if g.accruing else "",
        ]
        for g in groups
    ]
    footer = (
        f"{response.period}: {render.seconds(response.total_gpu_milliseconds)} GPU-seconds, "
        f"{money(response.total_amount_micros)} {response.currency_code}"
    )
    render.table(headers, rows)
    click.echo(footer)


@cli.command()
@click.argument("period", metavar="YYYY-MM")
@OUTPUT_FORMATS
def invoice(period: str, output: str) -> None:
    """Your invoice for a UTC month: a line per run (its attempts summed), rated per GPU type.

    A month still running, or with runs still holding GPUs, gives a draft that grows until final.
    """
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import billing_pb2

    try:
        bill = _billing().GetInvoice(billing_pb2.GetInvoiceRequest(name=period))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(bill)
        return
    if output == "csv":
        _csv(
            [
                "run",
                "gpu_type",
                "attempts",
                "gpu_milliseconds",
                "unit_price_micros",
                "amount_micros",
                "currency",
                "accruing",
            ],
            [
                [
                    line.run,
                    line.gpu_type,
                    line.attempt_count,
                    line.gpu_milliseconds,
                    line.unit_price_micros,
                    line.amount_micros,
                    bill.currency_code,
                    line.accruing,
                ]
                for line in bill.lines
            ],
        )
        return
    headers = ["RUN", "GPU TYPE", "ATTEMPTS", "GPU-SECONDS", "PRICE PER GPU-HOUR", f"AMOUNT ({bill.currency_code})"]
    rows = [
        [
            line.run.rsplit("/", 1)[-1],
            line.gpu_type,
            line.attempt_count,
            render.seconds(line.gpu_milliseconds) + (" (accruing)" if line.accruing else ""),
            "varied" if line.amount_micros and not line.unit_price_micros else money(line.unit_price_micros),
            money(line.amount_micros),
        ]
        for line in bill.lines
    ]
    status = "final" if bill.final else "draft: the month is not over or runs still accrue"
    footer = (
        f"invoice {bill.period} ({status}): {render.seconds(bill.total_gpu_milliseconds)} GPU-seconds, "
        f"total {money(bill.total_amount_micros)} {bill.currency_code}"
    )
    render.table(headers, rows)
    click.echo(footer)
