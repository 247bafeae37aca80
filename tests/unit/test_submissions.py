"""The gateway's submissions to the scheduler, batched: what each submitting call sees."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dlaas.scheduler.v1 import scheduler_pb2
from services.api_gateway.adapters.db import SpecRepository, metadata
from services.api_gateway.adapters.peers import Submissions
from services.api_gateway.runtime.gateway import Gateway
from services.api_gateway.settings import GatewaySettings
from services.common.errors import FailedPrecondition
from services.common.server import status_of
from tests.support import manifest, sqlite_tables

WHO: contextvars.ContextVar[str | None] = contextvars.ContextVar("who", default=None)


class FakeScheduler:
    """SubmitRuns that records each call (its runs, trace and caller) and holds the first one
    until released, so that later submissions pile up behind it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.fail: grpc.aio.AioRpcError | None = None
        self.during_call: Callable[[int], None] = lambda call: None  # told each call's number as it comes

    async def SubmitRuns(
        self, request: scheduler_pb2.SubmitRunsRequest, timeout: float
    ) -> scheduler_pb2.SubmitRunsResponse:
        self.calls.append(
            {
                "runs": [r.run.name for r in request.requests],
                "trace_id": trace.get_current_span().get_span_context().trace_id,
                "who": WHO.get(),
            }
        )
        self.during_call(len(self.calls))
        if len(self.calls) == 1:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        response = scheduler_pb2.SubmitRunsResponse()
        for item in request.requests:
            if item.run.name.endswith("-refused") or item.run.spec.command.startswith("refuse"):
                response.results.add(error=status_of(FailedPrecondition("it can never start", reason="RUN_NEVER_FITS")))
            elif item.run.name.endswith("-odd"):
                response.results.add(error={"code": 99, "message": "a code from the future"})
            else:
                response.results.add(run=scheduler_pb2.Run(name=item.run.name, spec=item.run.spec))
        return response


async def submit_as(submissions: Submissions, who: str, name: str) -> tuple[int, scheduler_pb2.Run | BaseException]:
    """A submitting call: its own caller and span, as a CreateRun call has."""
    WHO.set(who)
    with trace.get_tracer(__name__).start_as_current_span(f"create {name}") as span:
        try:
            return span.get_span_context().trace_id, await submissions.submit(
                scheduler_pb2.Run(name=f"accounts/{who}/runs/{name}"), "free"
            )
        except grpc.aio.AioRpcError as exc:
            return span.get_span_context().trace_id, exc


async def test_submissions_arriving_during_a_call_share_the_next_and_each_gets_its_own_answer(
    spans: InMemorySpanExporter,
) -> None:
    scheduler = FakeScheduler()
    submissions = Submissions(scheduler)  # type: ignore[arg-type]
    first = asyncio.create_task(submit_as(submissions, "a0", "run-0"))
    await asyncio.sleep(0.01)
    names = ["run-1", "run-2-refused", "run-3", "run-4-odd", "run-5"]
    rest = [asyncio.create_task(submit_as(submissions, f"a{i + 1}", n)) for i, n in enumerate(names)]
    await asyncio.sleep(0.01)
    scheduler.release.set()
    (first_trace, first_answer), *answers = await asyncio.gather(first, *rest)

    assert [len(call["runs"]) for call in scheduler.calls] == [1, 5]
    # A batch of one is sent in its caller's context: its trace, the account it acts for.
    assert scheduler.calls[0]["trace_id"] == first_trace and scheduler.calls[0]["who"] == "a0"
    assert isinstance(first_answer, scheduler_pb2.Run) and first_answer.name == "accounts/a0/runs/run-0"
    # A batch of several in a trace of its own, for nobody, linked to each submission's span.
    traces = {trace_id for trace_id, _ in answers}
    assert scheduler.calls[1]["trace_id"] not in traces | {first_trace, 0} and scheduler.calls[1]["who"] is None
    batch_span = next(s for s in spans.get_finished_spans() if s.name == "submit runs")
    assert {link.context.trace_id for link in batch_span.links} == traces
    assert batch_span.attributes is not None and batch_span.attributes["dlaas.runs"] == 5

    by_name = dict(zip(names, (answer for _, answer in answers), strict=True))
    assert [by_name[n].name for n in ("run-1", "run-3", "run-5")] == [  # type: ignore[union-attr]
        f"accounts/a{i}/runs/run-{i}" for i in (1, 3, 5)
    ]
    refused = by_name["run-2-refused"]
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and refused.details() == "it can never start"
    status = rpc_status.from_call(refused)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info) and info.reason == "RUN_NEVER_FITS"
    odd = by_name["run-4-odd"]
    assert isinstance(odd, grpc.aio.AioRpcError) and odd.code() == grpc.StatusCode.UNKNOWN
    odd_status = rpc_status.from_call(odd)
    assert odd_status is not None and odd_status.message == "a code from the future"


async def test_a_call_that_fails_fails_each_of_its_submissions_with_its_error() -> None:
    scheduler = FakeScheduler()
    scheduler.fail = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="scheduler down"
    )
    submissions = Submissions(scheduler)  # type: ignore[arg-type]
    scheduler.release.set()
    answers = await asyncio.gather(*(submit_as(submissions, "a", f"run-{i}") for i in range(4)))

    assert sum(len(call["runs"]) for call in scheduler.calls) == 4
    for _, answer in answers:
        assert isinstance(answer, grpc.aio.AioRpcError)
        assert answer.code() == grpc.StatusCode.UNAVAILABLE and answer.details() == "scheduler down"


async def test_a_submission_whose_caller_gives_up_is_still_answered_to_the_others() -> None:
    scheduler = FakeScheduler()
    submissions = Submissions(scheduler)  # type: ignore[arg-type]
    first = asyncio.create_task(submit_as(submissions, "a", "run-0"))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(submit_as(submissions, "b", "run-1"))
    stays = asyncio.create_task(submit_as(submissions, "c", "run-2"))
    await asyncio.sleep(0.01)
    gone.cancel()
    scheduler.release.set()
    with pytest.raises(asyncio.CancelledError):
        await gone
    _, answer = await stays
    assert isinstance(answer, scheduler_pb2.Run) and answer.name == "accounts/c/runs/run-2"
    await first
    assert scheduler.calls[1]["runs"] == ["accounts/b/runs/run-1", "accounts/c/runs/run-2"]


async def test_a_batch_whose_refused_spec_cannot_be_removed_still_answers_each_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway stores a batch of specs, then hands it to the scheduler in one call. Another
    writer holds the database while the scheduler answers, so the refused run's spec cannot be
    removed: the queued run is still answered as queued, the refused one as refused, and the spec
    left behind is logged (a retry with its request_id would hand it over again)."""
    database = tmp_path / "gateway.db"
    scheduler = FakeScheduler()

    def hold_the_file(call: int) -> None:
        if call == 2:
            other_writer.execute("BEGIN IMMEDIATE")

    scheduler.during_call = hold_the_file
    peers = SimpleNamespace(submissions=Submissions(scheduler))  # type: ignore[arg-type]  # all a submission needs
    async with sqlite_tables(database, metadata) as engine:
        other_writer = sqlite3.connect(database, isolation_level=None)
        gateway = Gateway(GatewaySettings(), SpecRepository(engine), peers)  # type: ignore[arg-type]
        try:
            first = asyncio.create_task(gateway.create_run("a", "free", manifest("true"), b"", "r0"))
            await asyncio.sleep(0.01)
            queued = asyncio.create_task(gateway.create_run("a", "free", manifest("true"), b"", "r1"))
            refused = asyncio.create_task(gateway.create_run("a", "free", manifest("refuse"), b"", "r2"))
            await asyncio.sleep(0.01)
            scheduler.release.set()
            await first
            answer = await queued
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await refused
        finally:
            other_writer.rollback()
            other_writer.close()

    assert [len(call["runs"]) for call in scheduler.calls] == [1, 2]
    assert answer.name.startswith("accounts/a/runs/run-")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "could not remove the specs of 1 refused runs" in caplog.text
    with contextlib.closing(sqlite3.connect(database)) as db:
        stored = dict(db.execute("SELECT request_id, name FROM gateway_run_specs").fetchall())
    assert set(stored) == {"r0", "r1", "r2"} and stored["r1"] == answer.name
