"""Stubs of the services the gateway calls, and the batching of its submissions to the scheduler."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from dlaas.credentials import Headers
from dlaas.metering.v1 import metering_pb2_grpc
from dlaas.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from dlaas.storage.v1 import storage_pb2_grpc
from services.common.batching import GroupWriter
from services.common.clients import open_channel
from services.common.settings import ServiceCredentials
from services.common.telemetry import current_carrier

TRACER = __name__
_KNOWN_CODES = frozenset(code.value[0] for code in grpc.StatusCode)


@dataclass(frozen=True)
class Submission:
    """A run to hand to the scheduler, made by `Submissions.prepare` in the submitting call."""

    request: scheduler_pb2.SubmitRunRequest
    context: contextvars.Context  # the submitting call's: a batch of one is sent in it


class Submissions:
    """Runs handed to the scheduler, several in one SubmitRuns call (one call and one scheduler
    transaction for many). `send` sends a batch its caller made (the gateway's intake batches new
    submissions with their specs); `submit` batches by itself the runs that arrive while its
    previous call is answered (resubmissions, experiments' trials), so two calls may be in flight.
    Each run gets its answer, or the grpc.aio.AioRpcError that a call for it alone would have
    raised, status details included.

    A batch of one is sent in its caller's context (its trace, the account it acts for); a batch
    of several in a trace of its own, linked to each submission's span, and for no account (the
    scheduler binds each run's account to its logs). A caller that gives up does not withdraw
    its run: as with a call already sent, it may be queued (a retry with its request_id finds it)."""

    def __init__(self, scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub):
        self._scheduler = scheduler
        self._writer: GroupWriter[Submission, scheduler_pb2.Run] = GroupWriter(self.send)

    async def submit(self, run: scheduler_pb2.Run, tier: str) -> scheduler_pb2.Run:
        return await self._writer.submit(self.prepare(run, tier))

    @staticmethod
    def prepare(run: scheduler_pb2.Run, tier: str) -> Submission:
        """`run`, to be sent in the current context (its trace, the account it acts for)."""
        request = scheduler_pb2.SubmitRunRequest(run=run, tier=tier, trace_context=current_carrier())
        return Submission(request, contextvars.copy_context())

    async def send(self, batch: Sequence[Submission]) -> list[scheduler_pb2.Run | BaseException]:
        """One SubmitRuns call for `batch`: each run's answer, or the error a call for it alone
        would have raised. A failure of the call itself is raised."""
        if len(batch) == 1:
            return await asyncio.create_task(self._call(batch), context=batch[0].context.copy())
        return await asyncio.create_task(self._call_linked(batch), context=contextvars.Context())

    async def _call_linked(self, batch: Sequence[Submission]) -> list[scheduler_pb2.Run | BaseException]:
        links = [trace.Link(s.context.run(_current_span_context)) for s in batch]
        with trace.get_tracer(TRACER).start_as_current_span(
            "submit runs", links=links, attributes={"dlaas.runs": len(batch)}
        ):
            return await self._call(batch)

    async def _call(self, batch: Sequence[Submission]) -> list[scheduler_pb2.Run | BaseException]:
        response = await self._scheduler.SubmitRuns(
            scheduler_pb2.SubmitRunsRequest(requests=[s.request for s in batch]), timeout=30
        )
        return [r.run if r.WhichOneof("result") == "run" else _rpc_error(r.error) for r in response.results]


def _current_span_context() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


def _rpc_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The error a call ending with `status` raises (what grpc_status.rpc_status reads back)."""
    if status.code not in _KNOWN_CODES:  # a code this client does not know: UNKNOWN, as gRPC itself would say
        status = status_pb2.Status(code=code_pb2.UNKNOWN, message=status.message, details=status.details)
    ended = rpc_status.to_status(status)
    return grpc.aio.AioRpcError(
        ended.code, grpc.aio.Metadata(), grpc.aio.Metadata(*ended.trailing_metadata), details=ended.details
    )


class Peers:
    def __init__(
        self,
        scheduler_address: str,
        storage_address: str,
        metering_address: str,
        credentials: ServiceCredentials,
        caller: Headers | None = None,
    ):
        addresses = (scheduler_address, storage_address, metering_address)
        self._channels = [open_channel(a, credentials, caller) for a in addresses]
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self._channels[0])
        self.storage = storage_pb2_grpc.StorageServiceStub(self._channels[1])
        self.metering = metering_pb2_grpc.MeteringServiceStub(self._channels[2])
        self.submissions = Submissions(self.scheduler)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
