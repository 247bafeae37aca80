"""Billing through the four real services: GPU time runs from assignment until the upload finished."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from pathlib import Path

import grpc
import pytest

from dlaas.gateway.v1 import billing_pb2, billing_pb2_grpc, gateway_pb2
from dlaas.types.v1 import run_pb2
from services.metering.domain.rating import Period
from tests.support import (
    Platform,
    assert_billed_exactly,
    closed_usage_records,
    manifest,
    pack,
    submit,
    transition_ms,
    wait_for,
)

pytestmark = pytest.mark.e2e

DLAAS = str(Path(sys.executable).parent / "dlaas")
VIRTUAL_MICROS_PER_GPU_MS = 360_000  # the default price of a virtual GPU-hour is 0.36: 0.1 micro-units a GPU-ms

# The command ends quickly; what it wrote (320 MB) is uploaded and verified afterwards.
SLOW_UPLOAD = pack(
    {
        "write.py": "import os\n"
        "with open(os.path.join(os.environ['RESULT_DIR'], 'weights.bin'), 'wb') as f:\n"
        "    for _ in range(40):\n"
        "        f.write(os.urandom(1 << 20) * 8)\n"
        "print('wrote 320 MB')\n"
    }
)


def billing(platform: Platform) -> billing_pb2_grpc.BillingServiceAsyncStub:
    return billing_pb2_grpc.BillingServiceStub(platform.channel)


async def dlaas(platform: Platform, *args: str) -> str:
    """The CLI as its own process, against the in-process platform's gateway."""
    env = {**os.environ, "DLAAS_ENDPOINT": platform.gateway.address, "DLAAS_API_KEY": platform.key}
    process = await asyncio.create_subprocess_exec(
        DLAAS, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_a_slow_upload_is_billed_until_it_has_finished(platform: Platform) -> None:
    run = await submit(platform.client, manifest("python write.py"), SLOW_UPLOAD)
    done = await wait_for(platform.client, run.name, timeout=180)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, done.status

    records = await closed_usage_records(platform.client, done)
    billed = assert_billed_exactly(done, records)
    assigned = transition_ms(done, run_pb2.RUN_STATE_ASSIGNED)
    command_ended = transition_ms(done, run_pb2.RUN_STATE_UPLOADING)
    upload_finished = transition_ms(done, run_pb2.RUN_STATE_COMPLETED)
    gpus = done.spec.resources.gpus
    assert billed == gpus * (upload_finished - assigned)
    # Billing to the command's end would have missed the whole upload.
    upload_ms = upload_finished - command_ended
    print(f"billed {billed} GPU-ms; the upload took {upload_ms} ms of it")
    assert upload_ms > 250, f"the upload took only {upload_ms} ms"
    assert billed - gpus * (command_ended - assigned) == gpus * upload_ms

    # The month's summary and invoice carry the same GPU time, rated at the virtual GPU's price.
    periods = sorted({Period.containing(assigned), Period.containing(upload_finished)})
    summed = 0
    for period in periods:
        summary = await billing(platform).SummarizeUsage(
            billing_pb2.SummarizeUsageRequest(
                period=period.name, group_by=billing_pb2.USAGE_GROUPING_RUN, run=run.name.rsplit("/", 1)[-1]
            )
        )
        summed += sum(g.gpu_milliseconds for g in summary.groups)
    assert summed == billed
    invoice = await billing(platform).GetInvoice(billing_pb2.GetInvoiceRequest(name=periods[-1].name))
    lines = [line for line in invoice.lines if line.run == run.name]
    if len(periods) == 1:
        [line] = lines
        assert (line.gpu_type, line.attempt_count, line.gpu_milliseconds) == ("virtual", 1, billed)
        assert line.unit_price_micros == VIRTUAL_MICROS_PER_GPU_MS
        assert line.amount_micros == (2 * billed * VIRTUAL_MICROS_PER_GPU_MS + 3_600_000) // 7_200_000
        assert not invoice.final  # the month is not over

    # Another account's invoice does not exist for this caller; a bad month or grouping is the caller's error.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await billing(platform).GetInvoice(billing_pb2.GetInvoiceRequest(name="accounts/globex/invoices/2026-11"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for request in (
        billing_pb2.SummarizeUsageRequest(period="2026-13"),
        billing_pb2.SummarizeUsageRequest(group_by=42),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await billing(platform).SummarizeUsage(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_every_way_a_run_ends_is_billed_exactly_and_shows_in_the_cli(platform: Platform) -> None:
    runs = [
        await submit(platform.client, manifest("python -c 'print(1)'", name="ok")),
        await submit(platform.client, manifest("python -c 'import sys; sys.exit(3)'", name="fails")),
        await submit(platform.client, manifest("python -c 'print(0)'", name="cpu", gpus=0)),
        await submit(platform.client, manifest("python -c 'import time; time.sleep(60)'", name="cancelled")),
    ]
    await wait_for(platform.client, runs[3].name, {run_pb2.RUN_STATE_RUNNING}, timeout=120)
    await platform.client.CancelRun(gateway_pb2.CancelRunRequest(name=runs[3].name))

    total = 0
    ended = {}
    for run in runs:
        done = await wait_for(platform.client, run.name, timeout=120)
        ended[done.spec.display_name] = done.status.state
        total += assert_billed_exactly(done, await closed_usage_records(platform.client, done))
    assert ended == {
        "ok": run_pb2.RUN_STATE_COMPLETED,
        "fails": run_pb2.RUN_STATE_FAILED,
        "cpu": run_pb2.RUN_STATE_COMPLETED,
        "cancelled": run_pb2.RUN_STATE_CANCELLED,
    }

    period = Period.containing(transition_ms(done, run_pb2.RUN_STATE_ASSIGNED)).name
    by_run = json.loads(await dlaas(platform, "usage", "--period", period, "--by", "run", "-o", "json"))
    if all(Period.containing(t.time.ToMilliseconds()).name == period for t in done.status.transitions):
        assert int(by_run["total_gpu_milliseconds"]) == total
        # The 0-GPU run holds no GPU and is billed nothing: no group of its own.
        assert len(by_run["groups"]) == 3
    by_type = list(
        csv.DictReader(io.StringIO(await dlaas(platform, "usage", "--period", period, "--by", "gpu-type", "-o", "csv")))
    )
    assert [(row["gpu_type"], row["attempts"], row["currency"]) for row in by_type] == [("virtual", "3", "USD")]
    invoice = json.loads(await dlaas(platform, "invoice", period, "-o", "json"))
    assert invoice["name"] == f"accounts/default/invoices/{period}"
    assert int(invoice["total_amount_micros"]) == sum(int(line["amount_micros"]) for line in invoice["lines"])
    table = await dlaas(platform, "invoice", period)
    assert f"invoice {period} (draft" in table
    lines = list(csv.DictReader(io.StringIO(await dlaas(platform, "invoice", period, "-o", "csv"))))
    assert {row["run"] for row in lines} == {run.name for run in runs if run.spec.resources.gpus}
    assert sum(int(row["amount_micros"]) for row in lines) == int(invoice["total_amount_micros"])
    records = await dlaas(platform, "usage", "--run", runs[0].name.rsplit("/", 1)[-1], "-o", "csv")
    [record] = list(csv.DictReader(io.StringIO(records)))
    billed = await closed_usage_records(
        platform.client, await platform.client.GetRun(gateway_pb2.GetRunRequest(name=runs[0].name))
    )
    assert (record["run"], int(record["gpu_milliseconds"]), record["accruing"]) == (
        runs[0].name,
        billed[0].gpu_milliseconds,
        "false",
    )
