"""Metering through its real gRPC server, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import permutations
from typing import Protocol

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from services.common.timeutil import now_ms, to_timestamp
from services.metering.app import build_server
from services.metering.domain.usage import EventKind, UsageEvent, UsageInterval, apply_event
from services.metering.settings import MeteringSettings
from tests.support import service_channel

OPEN = metering_pb2.USAGE_EVENT_KIND_OPEN
CLOSE = metering_pb2.USAGE_EVENT_KIND_CLOSE
T0 = 1_700_000_000_000  # an event time, ms since the epoch


class Databases(Protocol):
    """The `databases` fixture of tests/conftest.py: a fresh database URL per service."""

    def url(self, service: str) -> str: ...


@dataclass
class Metering:
    url: str
    stub: metering_pb2_grpc.MeteringServiceAsyncStub


@asynccontextmanager
async def running(url: str) -> AsyncIterator[metering_pb2_grpc.MeteringServiceAsyncStub]:
    service = await build_server(MeteringSettings(port=0, database_url=url))
    await service.start()
    channel = service_channel(service.address)
    try:
        yield metering_pb2_grpc.MeteringServiceStub(channel)
    finally:
        await channel.close()
        await service.stop(0)


@pytest.fixture
async def metering(databases: Databases) -> AsyncIterator[Metering]:
    url = databases.url("metering")
    async with running(url) as stub:
        yield Metering(url, stub)


def event(
    kind: metering_pb2.UsageEventKind.ValueType,
    time_ms: int,
    *,
    account: str = "acme",
    run: str = "r1",
    attempt: int = 1,
    gpus: int = 2,
) -> metering_pb2.UsageEvent:
    run_name = f"accounts/{account}/runs/{run}"
    suffix = "open" if kind == OPEN else "close"
    return metering_pb2.UsageEvent(
        event_id=f"{run_name}/attempts/{attempt}/{suffix}",
        account=f"accounts/{account}",
        run=run_name,
        attempt=attempt,
        kind=kind,
        event_time=to_timestamp(time_ms),
        gpus=gpus if kind == OPEN else 0,
        gpu_type="A100" if kind == OPEN else "",
        node="node-1" if kind == OPEN else "",
    )


async def record(
    stub: metering_pb2_grpc.MeteringServiceAsyncStub, *events: metering_pb2.UsageEvent
) -> metering_pb2.RecordUsageEventsResponse:
    return await stub.RecordUsageEvents(metering_pb2.RecordUsageEventsRequest(events=list(events)))


async def usage(
    stub: metering_pb2_grpc.MeteringServiceAsyncStub,
    account: str = "acme",
    *,
    run: str = "",
    page_size: int = 0,
    page_token: str = "",
) -> metering_pb2.ListUsageRecordsResponse:
    request = metering_pb2.ListUsageRecordsRequest(
        parent=f"accounts/{account}", run=run, page_size=page_size, page_token=page_token
    )
    return await stub.ListUsageRecords(request)


def bad_request(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError(f"no BadRequest in {status}")


async def test_open_and_close_bill_exact_gpu_milliseconds(metering: Metering) -> None:
    answer = await record(metering.stub, event(OPEN, T0, gpus=2), event(CLOSE, T0 + 1234))
    assert (answer.applied_count, answer.duplicate_count) == (2, 0)

    listing = await usage(metering.stub)
    [rec] = listing.usage_records
    assert rec.name == "accounts/acme/usageRecords/r1-a1"
    assert rec.run == "accounts/acme/runs/r1"
    assert (rec.attempt, rec.gpus, rec.gpu_type, rec.node) == (1, 2, "A100", "node-1")
    assert rec.start_time.ToMilliseconds() == T0
    assert rec.end_time.ToMilliseconds() == T0 + 1234
    assert rec.gpu_milliseconds == 2468
    assert not rec.accruing
    assert listing.total_gpu_milliseconds == 2468
    assert listing.next_page_token == ""


async def test_duplicate_deliveries_apply_once(metering: Metering) -> None:
    opened = event(OPEN, T0, gpus=4)
    answer = await record(metering.stub, opened, opened, opened)
    assert (answer.applied_count, answer.duplicate_count) == (1, 2)

    closed = event(CLOSE, T0 + 1000)
    answers = await asyncio.gather(*(record(metering.stub, closed) for _ in range(5)))
    assert sum(a.applied_count for a in answers) == 1
    assert sum(a.duplicate_count for a in answers) == 4

    # A late redelivery of the OPEN with another time changes nothing either.
    answer = await record(metering.stub, event(OPEN, T0 - 50_000, gpus=8))
    assert (answer.applied_count, answer.duplicate_count) == (0, 1)

    listing = await usage(metering.stub)
    [rec] = listing.usage_records
    assert (rec.gpus, rec.gpu_milliseconds) == (4, 4000)
    assert listing.total_gpu_milliseconds == 4000


async def test_concurrent_duplicates_of_a_fresh_event_apply_once(metering: Metering) -> None:
    opened = event(OPEN, T0, gpus=3)
    answers = await asyncio.gather(*(record(metering.stub, opened) for _ in range(3)))
    assert sum(a.applied_count for a in answers) == 1
    assert sum(a.duplicate_count for a in answers) == 2


async def test_open_and_close_of_one_attempt_applied_at_once_both_land(metering: Metering) -> None:
    for attempt in range(1, 6):
        answers = await asyncio.gather(
            record(metering.stub, event(OPEN, T0, attempt=attempt, gpus=1)),
            record(metering.stub, event(CLOSE, T0 + 100, attempt=attempt)),
        )
        assert sum(a.applied_count for a in answers) == 2
    listing = await usage(metering.stub)
    assert [r.gpu_milliseconds for r in listing.usage_records] == [100] * 5
    assert all(not r.accruing for r in listing.usage_records)


async def test_close_before_open(metering: Metering) -> None:
    answer = await record(metering.stub, event(CLOSE, T0 + 5000))
    assert answer.applied_count == 1
    # Nothing is billed before the OPEN says when and with how many GPUs.
    listing = await usage(metering.stub)
    assert list(listing.usage_records) == []
    assert listing.total_gpu_milliseconds == 0

    answer = await record(metering.stub, event(OPEN, T0, gpus=3))
    assert answer.applied_count == 1
    [rec] = (await usage(metering.stub)).usage_records
    assert rec.start_time.ToMilliseconds() == T0
    assert rec.end_time.ToMilliseconds() == T0 + 5000
    assert (rec.gpu_milliseconds, rec.accruing) == (15_000, False)


async def test_open_interval_accrues_until_now(metering: Metering) -> None:
    start = now_ms() - 10_000
    await record(metering.stub, event(OPEN, start, gpus=2))
    listing = await usage(metering.stub)
    after = now_ms()
    [rec] = listing.usage_records
    assert rec.accruing
    assert not rec.HasField("end_time")
    assert 2 * 10_000 <= rec.gpu_milliseconds <= 2 * (after - start)
    assert listing.total_gpu_milliseconds == rec.gpu_milliseconds


async def test_another_account_sees_nothing(metering: Metering) -> None:
    await record(metering.stub, event(OPEN, T0), event(CLOSE, T0 + 10))
    other = await usage(metering.stub, "globex")
    assert list(other.usage_records) == []
    assert other.total_gpu_milliseconds == 0

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage(metering.stub, "globex", run="accounts/acme/runs/r1")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run" in bad_request(caught.value)


async def test_pages_oldest_first_with_total_over_all_pages(metering: Metering) -> None:
    # Recorded newest first; listed oldest first.
    for i in reversed(range(5)):
        start = T0 + i * 60_000
        await record(
            metering.stub, event(OPEN, start, run=f"r{i}", gpus=i + 1), event(CLOSE, start + 1000, run=f"r{i}")
        )
    # A retry of r0 (attempt 2); another account's record is never listed here.
    retry_start = T0 + 10 * 60_000
    await record(
        metering.stub,
        event(OPEN, retry_start, run="r0", attempt=2, gpus=1),
        event(CLOSE, retry_start + 500, run="r0", attempt=2),
    )
    await record(metering.stub, event(OPEN, T0, account="globex", gpus=8), event(CLOSE, T0 + 1, account="globex"))

    names: list[str] = []
    totals: set[int] = set()
    token = ""
    while True:
        page = await usage(metering.stub, page_size=2, page_token=token)
        assert len(page.usage_records) <= 2
        names += [r.name for r in page.usage_records]
        totals.add(page.total_gpu_milliseconds)
        token = page.next_page_token
        if not token:
            break
    assert names == [f"accounts/acme/usageRecords/r{i}-a1" for i in range(5)] + ["accounts/acme/usageRecords/r0-a2"]
    assert totals == {sum((i + 1) * 1000 for i in range(5)) + 500}

    only_r0 = await usage(metering.stub, run="accounts/acme/runs/r0")
    assert [r.name for r in only_r0.usage_records] == [
        "accounts/acme/usageRecords/r0-a1",
        "accounts/acme/usageRecords/r0-a2",
    ]
    assert only_r0.total_gpu_milliseconds == sum(r.gpu_milliseconds for r in only_r0.usage_records)

    # A token is bound to its query.
    first = await usage(metering.stub, page_size=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await usage(metering.stub, run="accounts/acme/runs/r0", page_size=2, page_token=first.next_page_token)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad_request(caught.value)


async def test_invalid_events_are_refused_and_nothing_is_stored(metering: Metering) -> None:
    good = event(OPEN, T0)
    no_id = event(OPEN, T0, run="r2")
    no_id.event_id = ""
    no_time = event(CLOSE, T0, run="r3")
    no_time.ClearField("event_time")
    bad_names = event(OPEN, T0, run="r4")
    bad_names.account = "acme"
    bad_names.run = "runs/r4"
    no_kind = event(OPEN, T0, run="r5")
    no_kind.kind = metering_pb2.USAGE_EVENT_KIND_UNSPECIFIED
    too_many_gpus = event(OPEN, T0, run="r6", gpus=70_000)
    negative_gpus = event(CLOSE, T0, run="r7")
    negative_gpus.gpus = -1
    foreign_run = event(OPEN, T0, run="r8")
    foreign_run.run = "accounts/globex/runs/r8"

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(metering.stub, good, no_id, no_time, bad_names, no_kind, too_many_gpus, negative_gpus, foreign_run)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request(caught.value)) == {
        "events[1].event_id",
        "events[2].event_time",
        "events[3].account",
        "events[3].run",
        "events[4].kind",
        "events[5].gpus",
        "events[6].gpus",
        "events[7].run",
    }

    listing = await usage(metering.stub)
    assert list(listing.usage_records) == []
    # The valid event of the refused batch was not applied either.
    answer = await record(metering.stub, good)
    assert answer.applied_count == 1

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await record(metering.stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events" in bad_request(caught.value)


async def test_bad_parent_is_invalid_argument(metering: Metering) -> None:
    for parent in ("acme", "accounts/", "accounts/acme/runs/r1", "accounts/ACME"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await metering.stub.ListUsageRecords(metering_pb2.ListUsageRecordsRequest(parent=parent))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "parent" in bad_request(caught.value)


async def test_restart_keeps_the_ledger(databases: Databases) -> None:
    url = databases.url("metering")
    async with running(url) as stub:
        await record(stub, event(OPEN, T0, gpus=2), event(CLOSE, T0 + 1234))
    async with running(url) as stub:
        listing = await usage(stub)
        assert [r.gpu_milliseconds for r in listing.usage_records] == [2468]
        answer = await record(stub, event(OPEN, T0, gpus=2), event(CLOSE, T0 + 1234))
        assert (answer.applied_count, answer.duplicate_count) == (0, 2)
        assert (await usage(stub)).total_gpu_milliseconds == 2468


def _domain_event(kind: EventKind, time_ms: int, gpus: int = 0) -> UsageEvent:
    return UsageEvent(
        event_id=f"accounts/a/runs/r/attempts/0/{kind.value}",
        account="a",
        run="accounts/a/runs/r",
        run_id="r",
        attempt=0,
        kind=kind,
        time_ms=time_ms,
        gpus=gpus,
        gpu_type="",
        node="",
    )


def test_an_interval_does_not_depend_on_the_order_of_its_events() -> None:
    events = [_domain_event(EventKind.OPEN, 1000, gpus=3), _domain_event(EventKind.CLOSE, 4000)]
    results: set[UsageInterval] = set()
    for order in permutations(events):
        interval = None
        for item in order:
            interval = apply_event(interval, item)
        assert interval is not None
        results.add(interval)
    [interval] = results
    assert interval.gpu_milliseconds(now_ms=0) == 9000
    assert not interval.accruing


def test_gpu_milliseconds_is_never_negative() -> None:
    closed_early = apply_event(
        apply_event(None, _domain_event(EventKind.OPEN, 5000, gpus=2)), _domain_event(EventKind.CLOSE, 4000)
    )
    assert closed_early.gpu_milliseconds(now_ms=0) == 0
    still_open = apply_event(None, _domain_event(EventKind.OPEN, 5000, gpus=2))
    assert still_open.gpu_milliseconds(now_ms=4000) == 0
    assert still_open.gpu_milliseconds(now_ms=6000) == 2000
    assert apply_event(None, _domain_event(EventKind.CLOSE, 4000)).gpu_milliseconds(now_ms=9000) == 0
