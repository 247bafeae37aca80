"""Rating, summaries, invoices and the allowance RPC through metering's real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import calendar
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeAlias

import grpc
import pytest

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from services.common.timeutil import now_ms
from services.metering.app import build_server
from services.metering.settings import MeteringSettings
from tests.services.test_metering import CLOSE, OPEN, Databases, bad_request, event, record, usage
from tests.support import service_channel

HOUR = 3_600_000
DEC_1 = calendar.timegm((2025, 12, 1, 0, 0, 0)) * 1000
NOV_27 = calendar.timegm((2025, 11, 27, 0, 0, 0)) * 1000
PRICE_CHANGE = NOV_27 + 12 * HOUR
# A100 (the tests' events' type) costs 3.60 a GPU-hour, then 7.20 from Nov 27 12:00 UTC.
PRICES = {
    "a100": [{"per_gpu_hour": "3.60"}, {"from": "2025-11-27T12:00:00Z", "per_gpu_hour": "7.20"}],
    "virtual": "0.36",
}

Stub: TypeAlias = "metering_pb2_grpc.MeteringServiceAsyncStub"


@asynccontextmanager
async def running(url: str, prices: Mapping[str, object] | None = None) -> AsyncIterator[Stub]:
    settings = MeteringSettings(port=0, database_url=url, prices=json.dumps(prices or PRICES))
    service = await build_server(settings)
    await service.start()
    channel = service_channel(service.address)
    try:
        yield metering_pb2_grpc.MeteringServiceStub(channel)
    finally:
        await channel.close()
        await service.stop(0)


@pytest.fixture
async def stub(databases: Databases) -> AsyncIterator[Stub]:
    async with running(databases.url("metering")) as started:
        yield started


async def invoice(stub: Stub, period: str = "2025-11", account: str = "acme") -> metering_pb2.Invoice:
    return await stub.GetInvoice(metering_pb2.GetInvoiceRequest(name=f"accounts/{account}/invoices/{period}"))


async def summary(
    stub: Stub,
    group_by: metering_pb2.UsageGrouping.ValueType,
    period: str = "2025-11",
    *,
    run: str = "",
    page_size: int = 0,
    page_token: str = "",
) -> metering_pb2.SummarizeUsageResponse:
    return await stub.SummarizeUsage(
        metering_pb2.SummarizeUsageRequest(
            parent="accounts/acme",
            period=period,
            group_by=group_by,
            run=run,
            page_size=page_size,
            page_token=page_token,
        )
    )


async def test_an_interval_across_the_month_end_is_billed_in_both_months(stub: Stub) -> None:
    await record(stub, event(OPEN, DEC_1 - HOUR, gpus=2), event(CLOSE, DEC_1 + 30 * 60_000))
    nov, dec = await invoice(stub, "2025-11"), await invoice(stub, "2025-12")

    [nov_line] = nov.lines
    assert (nov_line.run, nov_line.gpu_type, nov_line.attempt_count) == ("accounts/acme/runs/r1", "A100", 1)
    assert nov_line.gpu_milliseconds == 2 * HOUR
    assert nov_line.amount_micros == 2 * 7_200_000
    assert nov.name == "accounts/acme/invoices/2025-11"
    assert (nov.start_time.ToMilliseconds(), nov.end_time.ToMilliseconds()) == (DEC_1 - 30 * 24 * HOUR, DEC_1)
    assert nov.final and nov.currency_code == "USD"

    [dec_line] = dec.lines
    assert dec_line.gpu_milliseconds == HOUR
    assert dec.total_amount_micros == 7_200_000
    # The whole interval, split, is billed exactly once.
    [rec] = (await usage(stub)).usage_records
    assert nov.total_gpu_milliseconds + dec.total_gpu_milliseconds == rec.gpu_milliseconds == 3 * HOUR


async def test_a_price_change_mid_interval_rates_each_part_at_its_own_price(stub: Stub) -> None:
    await record(stub, event(OPEN, PRICE_CHANGE - HOUR, gpus=1), event(CLOSE, PRICE_CHANGE + 2 * HOUR))
    [line] = (await invoice(stub)).lines
    assert line.gpu_milliseconds == 3 * HOUR
    assert line.amount_micros == 3_600_000 + 2 * 7_200_000
    assert line.unit_price_micros == 0  # more than one price on the line

    # A GPU type without a price of its own takes the default "*" price (3.00 from the settings' seed
    # of the test: none here, so nothing) and a priced type its own.
    await record(stub, event(OPEN, NOV_27, run="r2", gpus=1), event(CLOSE, NOV_27 + HOUR, run="r2"))
    lines = {line.run: line for line in (await invoice(stub)).lines}
    assert lines["accounts/acme/runs/r2"].unit_price_micros == 3_600_000
    assert lines["accounts/acme/runs/r2"].amount_micros == 3_600_000


async def test_duplicates_never_double_bill(stub: Stub) -> None:
    opened, closed = event(OPEN, NOV_27, gpus=2), event(CLOSE, NOV_27 + HOUR)
    # Duplicates within one batch, across batches, concurrent, and late with other values.
    answer = await record(stub, opened, opened, closed, opened, closed)
    assert (answer.applied_count, answer.duplicate_count) == (2, 3)
    answers = await asyncio.gather(*(record(stub, opened, closed) for _ in range(5)))
    assert sum(a.applied_count for a in answers) == 0
    late = event(CLOSE, NOV_27 + 50 * HOUR)
    assert (await record(stub, late)).duplicate_count == 1

    bill = await invoice(stub)
    assert [(line.attempt_count, line.gpu_milliseconds) for line in bill.lines] == [(1, 2 * HOUR)]
    assert bill.total_amount_micros == 2 * 3_600_000
    by_run = await summary(stub, metering_pb2.USAGE_GROUPING_RUN)
    assert by_run.total_gpu_milliseconds == 2 * HOUR
    assert by_run.total_amount_micros == bill.total_amount_micros


async def test_a_batch_with_fresh_and_seen_events_of_many_attempts_applies_each_once(stub: Stub) -> None:
    first = [event(OPEN, NOV_27 + i, run=f"r{i}", gpus=1) for i in range(50)]
    await record(stub, *first[:25])
    answer = await record(stub, *first, *[event(CLOSE, NOV_27 + 1000 + i, run=f"r{i}") for i in range(50)])
    assert (answer.applied_count, answer.duplicate_count) == (75, 25)
    listing = await usage(stub, page_size=1000)
    assert [r.gpu_milliseconds for r in listing.usage_records] == [1000] * 50


async def test_summaries_by_run_gpu_type_and_day_with_pages(stub: Stub) -> None:
    day = 24 * HOUR
    await record(
        stub,
        event(OPEN, NOV_27 - HOUR, run="r1", gpus=1),
        event(CLOSE, NOV_27 + HOUR, run="r1"),
        event(OPEN, NOV_27 + day, run="r2", gpus=3),
        event(CLOSE, NOV_27 + day + 1000, run="r2"),
        event(OPEN, NOV_27 + day, run="r3", gpus=1),
        event(CLOSE, NOV_27 + day + 10, run="r3"),
    )
    by_day = await summary(stub, metering_pb2.USAGE_GROUPING_DAY)
    assert [(g.key, g.gpu_milliseconds, g.attempt_count) for g in by_day.groups] == [
        ("2025-11-26", HOUR, 1),
        ("2025-11-27", HOUR, 1),
        ("2025-11-28", 3010, 2),
    ]
    by_type = await summary(stub, metering_pb2.USAGE_GROUPING_GPU_TYPE)
    assert [(g.key, g.gpu_milliseconds) for g in by_type.groups] == [("A100", 2 * HOUR + 3010)]
    # 3.60 a GPU-hour before the change, 7.20 after it: 2 micro-units a GPU-ms.
    assert by_type.total_amount_micros == by_day.total_amount_micros == 2 * 3_600_000 + 3010 * 2

    keys, token = [], ""
    while True:
        page = await summary(stub, metering_pb2.USAGE_GROUPING_RUN, page_size=2, page_token=token)
        keys += [g.key for g in page.groups]
        assert page.total_gpu_milliseconds == 2 * HOUR + 3010
        token = page.next_page_token
        if not token:
            break
    assert keys == [f"accounts/acme/runs/r{i}" for i in (1, 2, 3)]

    only = await summary(stub, metering_pb2.USAGE_GROUPING_RUN, run="accounts/acme/runs/r2")
    assert [(g.key, g.gpu_milliseconds) for g in only.groups] == [("accounts/acme/runs/r2", 3000)]
    assert (await summary(stub, metering_pb2.USAGE_GROUPING_RUN, "2025-10")).groups == []

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await summary(stub, metering_pb2.USAGE_GROUPING_DAY, page_token=page.next_page_token or "bad")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await summary(stub, metering_pb2.USAGE_GROUPING_RUN, "2026-13")
    assert "period" in bad_request(caught.value)


async def test_monthly_usage_counts_closed_and_accruing_gpu_time(stub: Stub) -> None:
    start = now_ms() - 10_000
    period = f"{datetime.fromtimestamp(start / 1000, UTC):%Y-%m}"
    await record(stub, event(OPEN, start, run="r1", gpus=2), event(CLOSE, start + 4000, run="r1"))
    await record(stub, event(OPEN, start, run="r2", gpus=3))
    await record(stub, event(OPEN, start, account="globex", run="r9", gpus=8))

    used = await stub.GetMonthlyUsage(metering_pb2.GetMonthlyUsageRequest(account="accounts/acme"))
    after = now_ms()
    assert used.period == period and used.account == "accounts/acme"
    assert used.closed_gpu_milliseconds == 8000
    assert used.accruing_gpus == 3
    assert 3 * 10_000 <= used.accruing_gpu_milliseconds <= 3 * (after - start)
    assert used.gpu_milliseconds == used.closed_gpu_milliseconds + used.accruing_gpu_milliseconds

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetMonthlyUsage(metering_pb2.GetMonthlyUsageRequest(account="acme"))
    assert "account" in bad_request(caught.value)


async def test_a_zero_gpu_run_is_recorded_and_bills_nothing(stub: Stub) -> None:
    answer = await record(stub, event(OPEN, NOV_27, gpus=0), event(CLOSE, NOV_27 + 5000))
    assert answer.applied_count == 2
    bill = await invoice(stub)
    assert [(line.gpu_milliseconds, line.amount_micros) for line in bill.lines] == []
    assert bill.total_amount_micros == 0


async def test_invoice_names_are_checked(stub: Stub) -> None:
    bad = ("2025-11", "accounts/acme/invoices/", "accounts/acme/invoices/2026-1", "accounts/x_y/invoices/2025-11")
    for name in bad:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetInvoice(metering_pb2.GetInvoiceRequest(name=name))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "name" in bad_request(caught.value)


async def test_the_price_book_keeps_its_prices_across_restarts(databases: Databases) -> None:
    url = databases.url("metering")
    async with running(url) as stub:
        await record(stub, event(OPEN, NOV_27, gpus=1), event(CLOSE, NOV_27 + HOUR))
        assert (await invoice(stub)).total_amount_micros == 3_600_000
    # A new seed cannot rewrite a price already in the book; it can add one with a later date.
    changed = {"a100": [{"per_gpu_hour": "1.00"}, {"from": "2025-11-27T00:30:00Z", "per_gpu_hour": "0"}]}
    async with running(url, changed) as stub:
        assert (await invoice(stub)).total_amount_micros == 3_600_000 // 2
