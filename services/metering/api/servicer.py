"""MeteringService: proto ↔ domain, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.names import account_name, parse_account
from services.common.pagination import decode_token, encode_token, page_size
from services.common.timeutil import from_timestamp, now_ms, to_timestamp
from services.metering.adapters.db import UsageRepository
from services.metering.domain import rating
from services.metering.domain.usage import (
    EventInput,
    EventKind,
    UsageInterval,
    parse_usage_query,
    validate_events,
)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_KINDS = {
    metering_pb2.USAGE_EVENT_KIND_OPEN: EventKind.OPEN,
    metering_pb2.USAGE_EVENT_KIND_CLOSE: EventKind.CLOSE,
}


_GROUPINGS = {
    metering_pb2.USAGE_GROUPING_UNSPECIFIED: rating.Grouping.RUN,
    metering_pb2.USAGE_GROUPING_RUN: rating.Grouping.RUN,
    metering_pb2.USAGE_GROUPING_GPU_TYPE: rating.Grouping.GPU_TYPE,
    metering_pb2.USAGE_GROUPING_DAY: rating.Grouping.DAY,
}


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, repository: UsageRepository, currency: str):
        self._repository = repository
        self._currency = currency

    async def RecordUsageEvents(
        self, request: metering_pb2.RecordUsageEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.RecordUsageEventsResponse:
        events = validate_events([_event_input(event) for event in request.events])
        applied = await self._repository.apply_all(events)  # one transaction: all or, on failure, none
        return metering_pb2.RecordUsageEventsResponse(applied_count=applied, duplicate_count=len(events) - applied)

    async def ListUsageRecords(
        self, request: metering_pb2.ListUsageRecordsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.ListUsageRecordsResponse:
        query = parse_usage_query(request.parent, request.run)
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        offset = decode_token(request.page_token, query.token_key)
        now = now_ms()
        page = await self._repository.list_intervals(query, offset, size, now)
        return metering_pb2.ListUsageRecordsResponse(
            usage_records=[_usage_record(interval, now) for interval in page.intervals],
            next_page_token=encode_token(offset + size, query.token_key) if page.more else "",
            total_gpu_milliseconds=page.total_gpu_milliseconds,
        )

    async def SummarizeUsage(
        self, request: metering_pb2.SummarizeUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.SummarizeUsageResponse:
        now = now_ms()
        query = parse_usage_query(request.parent, request.run)
        period = rating.parse_period(request.period, now)
        if request.group_by not in _GROUPINGS:
            raise InvalidArgument.field("group_by", "must be RUN, GPU_TYPE or DAY")
        grouping = _GROUPINGS[request.group_by]
        size = page_size(request.page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        token_key = f"{query.token_key}|{period.name}|{grouping.value}"
        offset = decode_token(request.page_token, token_key)
        found = await self._repository.overlapping(query.account, period.start_ms, period.end_ms, query.run)
        book = await self._repository.price_book(self._currency)
        tallies = rating.summarize(found, period, grouping, book, now)
        return metering_pb2.SummarizeUsageResponse(
            period=period.name,
            groups=[
                metering_pb2.UsageGroup(
                    key=t.key,
                    gpu_milliseconds=t.gpu_milliseconds,
                    amount_micros=t.amount_micros,
                    accruing=t.accruing,
                    attempt_count=t.attempt_count,
                )
                for t in tallies[offset : offset + size]
            ],
            next_page_token=encode_token(offset + size, token_key) if offset + size < len(tallies) else "",
            total_gpu_milliseconds=sum(t.gpu_milliseconds for t in tallies),
            total_amount_micros=sum(t.amount_micros for t in tallies),
            currency_code=book.currency,
        )

    async def GetInvoice(
        self, request: metering_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.Invoice:
        now = now_ms()
        account, period = _parse_invoice_name(request.name, now)
        found = await self._repository.overlapping(account, period.start_ms, period.end_ms)
        book = await self._repository.price_book(self._currency)
        bill = rating.invoice(account, found, period, book, now)
        return metering_pb2.Invoice(
            name=f"{account_name(account)}/invoices/{period.name}",
            period=period.name,
            start_time=to_timestamp(period.start_ms),
            end_time=to_timestamp(period.end_ms),
            lines=[
                metering_pb2.InvoiceLine(
                    run=line.run,
                    gpu_type=line.gpu_type,
                    attempt_count=line.attempt_count,
                    gpu_milliseconds=line.gpu_milliseconds,
                    unit_price_micros=line.unit_price_micros,
                    amount_micros=line.amount_micros,
                    accruing=line.accruing,
                )
                for line in bill.lines
            ],
            total_gpu_milliseconds=bill.total_gpu_milliseconds,
            total_amount_micros=bill.total_amount_micros,
            currency_code=bill.currency,
            final=bill.final,
            compute_time=to_timestamp(now),
        )

    async def GetMonthlyUsage(
        self, request: metering_pb2.GetMonthlyUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.MonthlyUsage:
        now = now_ms()
        account = parse_account(request.account, field="account")
        period = rating.parse_period(request.period, now)
        found = await self._repository.overlapping(account, period.start_ms, period.end_ms)
        used = rating.monthly_usage(found, period, now)
        return metering_pb2.MonthlyUsage(
            account=account_name(account),
            period=period.name,
            gpu_milliseconds=used.gpu_milliseconds,
            closed_gpu_milliseconds=used.closed_gpu_milliseconds,
            accruing_gpu_milliseconds=used.accruing_gpu_milliseconds,
            accruing_gpus=used.accruing_gpus,
            compute_time=to_timestamp(now),
        )


def _parse_invoice_name(name: str, now: int) -> tuple[str, rating.Period]:
    """accounts/{account}/invoices/{YYYY-MM}."""
    parent, sep, period = name.rpartition("/invoices/")
    if not sep or not period:
        raise InvalidArgument.field("name", f"must look like accounts/{{account}}/invoices/YYYY-MM, got {name[:80]!r}")
    return parse_account(parent, field="name"), rating.parse_period(period, now, field_name="name")


def _event_input(event: metering_pb2.UsageEvent) -> EventInput:
    return EventInput(
        event_id=event.event_id,
        account=event.account,
        run=event.run,
        attempt=event.attempt,
        kind=_KINDS.get(event.kind),
        time_ms=from_timestamp(event.event_time) if event.HasField("event_time") else None,
        gpus=event.gpus,
        gpu_type=event.gpu_type,
        node=event.node,
    )


def _usage_record(interval: UsageInterval, now: int) -> metering_pb2.UsageRecord:
    return metering_pb2.UsageRecord(
        name=interval.record_name,
        run=interval.run,
        attempt=interval.attempt,
        gpus=interval.gpus,
        gpu_type=interval.gpu_type,
        node=interval.node,
        start_time=to_timestamp(interval.start_ms),
        end_time=to_timestamp(interval.end_ms),
        gpu_milliseconds=interval.gpu_milliseconds(now),
        accruing=interval.accruing,
    )
