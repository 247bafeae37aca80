"""MeteringService: proto ↔ domain, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from dlaas.metering.v1 import metering_pb2, metering_pb2_grpc
from services.common.pagination import decode_token, encode_token, page_size
from services.common.timeutil import from_timestamp, now_ms, to_timestamp
from services.metering.adapters.db import UsageRepository
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


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(self, repository: UsageRepository):
        self._repository = repository

    async def RecordUsageEvents(
        self, request: metering_pb2.RecordUsageEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metering_pb2.RecordUsageEventsResponse:
        events = validate_events([_event_input(event) for event in request.events])
        applied = 0
        for event in events:  # one transaction each: a failure part-way leaves the rest to a retry
            if await self._repository.apply(event):
                applied += 1
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
