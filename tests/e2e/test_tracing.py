"""One trace per submission, across gateway, scheduler, storage and metering."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import Platform, manifest, pack, submit, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_one_trace_spans_all_four_services(platform: Platform, spans: InMemorySpanExporter) -> None:
    run = await submit(platform.client, manifest("python -c 'print(1)'"), pack({"x.py": "print(2)"}))
    await wait_for(platform.client, run.name)

    create = [s for s in spans.get_finished_spans() if s.name == "/dlaas.gateway.v1.TrainingService/CreateRun"]
    assert len(create) == 1
    trace_id = create[0].context.trace_id
    wanted = {
        "/dlaas.gateway.v1.TrainingService/CreateRun",
        "/dlaas.storage.v1.StorageService/WriteObject",
        "/dlaas.scheduler.v1.SchedulerService/SubmitRuns",
        "/dlaas.storage.v1.StorageService/CreateGrant",
        "/dlaas.metering.v1.MeteringService/RecordUsageEvents",
    }

    def metering_calls() -> int:
        return sum(
            1
            for s in spans.get_finished_spans()
            if s.context.trace_id == trace_id
            and s.kind.name == "SERVER"
            and s.name == "/dlaas.metering.v1.MeteringService/RecordUsageEvents"
        )

    for _ in range(100):  # usage events reach metering asynchronously, through the outbox
        if metering_calls() >= 2:
            break
        await asyncio.sleep(0.05)
    in_trace = {s.name for s in spans.get_finished_spans() if s.context.trace_id == trace_id}
    assert wanted <= in_trace, sorted(in_trace)
    # Both the open and the close event of the run are delivered within the submission's trace.
    assert metering_calls() == 2
