"""The gateway's application layer: authenticate → validate → store → hand to the scheduler.

Account scoping: every call acts as one account; a resource of another account is NOT_FOUND.
"""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
from google.protobuf.duration_pb2 import Duration

from dlaas.metering.v1 import metering_pb2
from dlaas.scheduler.v1 import scheduler_pb2
from dlaas.storage.v1 import storage_pb2
from dlaas.types.v1 import run_pb2
from services.api_gateway.adapters.db import NewSpec, SpecRepository, StoredSpec
from services.api_gateway.adapters.peers import Peers, Submission, Submissions
from services.api_gateway.domain.archive import check_code_archive
from services.api_gateway.domain.manifest import ParsedManifest, parse_manifest
from services.api_gateway.settings import GatewaySettings
from services.common import names
from services.common.batching import GroupWriter
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.timeutil import now_ms

log = logging.getLogger(__name__)

# Errors from the scheduler that refuse the run for good: what it would be is invalid or can
# never run (a trial refused so has failed).
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
# Errors after which the stored spec is removed, so that nothing is half-written: the refusals,
# and a full queue (a retry later is a new submission; an experiment's trial waits for its next pass).
NOT_QUEUED = REFUSALS | {grpc.StatusCode.RESOURCE_EXHAUSTED}


def check_request_id(request_id: str) -> None:
    """At most 200 printable characters (a NUL would break PostgreSQL's statements)."""
    if len(request_id) > 200:
        raise InvalidArgument.field("request_id", "must be at most 200 characters")
    if not request_id.isprintable():
        raise InvalidArgument.field("request_id", "must be printable characters, without control characters")


@dataclass(frozen=True)
class _Intake:
    """A new submission: its spec to store, then to hand to the scheduler."""

    new: NewSpec
    spec: run_pb2.RunSpec  # new.spec.spec, parsed
    tier: str
    context: contextvars.Context  # the submitting call's


@dataclass(frozen=True)
class _Submitted:
    run: scheduler_pb2.Run | BaseException  # the queued run, or the error the call raises
    retry: bool  # its request_id was stored first by another call, whose spec was handed over


class Gateway:
    def __init__(self, settings: GatewaySettings, specs: SpecRepository, peers: Peers):
        self.settings = settings
        self.specs = specs
        self.peers = peers
        self._intake: GroupWriter[_Intake, _Submitted] = GroupWriter(self._store_and_submit)

    # ---- names ---------------------------------------------------------------------------

    def account_parent(self, account: str, parent: str) -> str:
        """The caller's own account; naming another one is NOT_FOUND (no existence leak)."""
        if parent and names.parse_account(parent) != account:
            raise NotFound(f"{parent} not found")
        return names.account_name(account)

    def run_name(self, account: str, name: str, field: str = "name") -> str:
        """A run id or a full run name, resolved within the caller's account."""
        if names.is_id(name):
            return names.run_name(account, name)
        owner, _ = names.parse_run(name, field)
        if owner != account:
            raise NotFound(f"run {name} not found")
        return name

    # ---- runs ----------------------------------------------------------------------------

    def parse(self, manifest: str) -> ParsedManifest:
        if not manifest.strip():
            raise InvalidArgument.field("manifest", "is required")
        return parse_manifest(manifest, frameworks=self.settings.frameworks)

    async def create_run(
        self,
        account: str,
        tier: str,
        manifest: str,
        code_archive: bytes,
        request_id: str,
        admit: Callable[[], Callable[[], None]] = lambda: lambda: None,
    ) -> scheduler_pb2.Run:
        """Validates, answers a retry as the first call, then `admit`s (the rate limit: only new,
        well-formed submissions count; `admit` answers how to give its token back), then stores."""
        parsed = self.parse(manifest)
        check_code_archive(code_archive, self.settings.max_code_archive_bytes, self.settings.max_code_archive_files)
        check_request_id(request_id)
        if request_id and (code_archive or parsed.inline_connections):
            # These write before the spec is stored: a retry must be known first, and write nothing again.
            earlier = await self.specs.by_request(account, request_id)
            if earlier is not None:
                return await self._resubmit(earlier, tier)
        try:
            give_back = admit()
        except ResourceExhausted:
            # Over the rate: a retry of an earlier call is still answered as that call was.
            earlier = await self.specs.by_request(account, request_id) if request_id else None
            if earlier is None:
                raise
            return await self._resubmit(earlier, tier)

        for inline in parsed.inline_connections:
            # Inline credentials become a connection held (sealed) by storage; the spec names it only.
            try:
                await self.peers.storage.CreateConnection(
                    storage_pb2.CreateConnectionRequest(
                        parent=names.account_name(account),
                        connection_id=inline.name,
                        connection=storage_pb2.Connection(
                            endpoint=inline.endpoint,
                            access_key_id=inline.access_key_id,
                            secret_access_key=inline.secret_access_key,
                        ),
                        # The same endpoint and key with a rotated secret: the new secret replaces the old.
                        replace_secret=True,
                    ),
                    timeout=30,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # a connection of that name, for another store
                    raise
        run_id = "run-" + uuid.uuid4().hex[:12]
        name = names.run_name(account, run_id)
        code: run_pb2.ObjectLocation | None = None
        if code_archive:
            code = run_pb2.ObjectLocation(bucket=self.settings.code_bucket, prefix=f"{run_id}/model.tar.gz")
            await self.peers.storage.WriteObject(
                storage_pb2.WriteObjectRequest(parent=names.account_name(account), location=code, data=code_archive),
                timeout=60,
            )
        stored = StoredSpec(
            name, account, request_id or None, parsed.spec.SerializeToString(), code.prefix if code else None, False
        )
        new = NewSpec(stored, _redacted(manifest, parsed), now_ms())
        submitted = await self._intake.submit(_Intake(new, parsed.spec, tier, contextvars.copy_context()))
        if submitted.retry:
            give_back()  # a retry, or another call with the same request_id that stored first: not a new one
        if isinstance(submitted.run, BaseException):
            raise submitted.run
        return submitted.run

    async def _store_and_submit(self, batch: Sequence[_Intake]) -> list[_Submitted | BaseException]:
        """Stores a batch of specs in one transaction, then hands them to the scheduler in one
        SubmitRuns call; that call is what a batch waits on, so the submissions that arrive
        meanwhile form the next one. A spec whose request_id was stored first is not stored
        again: the spec stored then is handed over again instead, and the scheduler answers with
        the run it already holds. The specs of runs the scheduler refuses are removed. Once the
        specs are stored, each caller gets its own answer: nothing after fails the whole batch."""
        found = await self.specs.add_many([intake.new for intake in batch])
        sent: dict[int, tuple[StoredSpec, Submission]] = {}  # by place in the batch
        for index, (intake, earlier) in enumerate(zip(batch, found, strict=True)):
            if isinstance(earlier, BaseException):
                continue  # not stored: its caller gets why
            stored = earlier or intake.new.spec
            run = self._run(stored, intake.spec if earlier is None else None)
            # Prepared in the submitting call's context: the run carries its trace.
            sent[index] = (stored, intake.context.run(Submissions.prepare, run, intake.tier))
        answers: dict[int, scheduler_pb2.Run | BaseException] = {}
        if sent:
            replies: Sequence[scheduler_pb2.Run | BaseException]
            try:
                replies = await self.peers.submissions.send([submission for _, submission in sent.values()])
            except Exception as exc:  # noqa: BLE001 - the call itself failed: each run with its error
                replies = [exc] * len(sent)
            answers = dict(zip(sent, replies, strict=True))
            refused = [
                sent[index][0].name
                for index, answer in answers.items()
                if isinstance(answer, grpc.aio.AioRpcError) and answer.code() in NOT_QUEUED
            ]
            if refused:
                try:
                    await self.specs.remove(refused)  # nothing half-written
                except Exception:  # the queued runs of the batch are still queued
                    # Each caller still gets its own answer; a spec left behind is what a retry with its
                    # request_id hands over again (and is refused again, or queued).
                    log.exception("could not remove the specs of %d refused runs", len(refused))
        return [
            _Submitted(answers[index], retry=earlier is not None) if index in answers else cast(BaseException, earlier)
            for index, earlier in enumerate(found)
        ]

    def _run(self, stored: StoredSpec, spec: run_pb2.RunSpec | None = None) -> scheduler_pb2.Run:
        """The run a stored spec stands for; `spec`: its spec already parsed."""
        if spec is None:
            spec = run_pb2.RunSpec.FromString(stored.spec)
        run = scheduler_pb2.Run(name=stored.name, spec=spec)
        if stored.code_key:
            run.code.CopyFrom(run_pb2.ObjectLocation(bucket=self.settings.code_bucket, prefix=stored.code_key))
        return run

    async def _resubmit(self, stored: StoredSpec, tier: str) -> scheduler_pb2.Run:
        """A retry: handed to the scheduler again, which answers with the run it already holds."""
        try:
            return await self.peers.submissions.submit(self._run(stored), tier)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in NOT_QUEUED:
                await self.specs.remove([stored.name])  # nothing half-written
            raise

    async def get_run(self, name: str) -> scheduler_pb2.Run:
        return await self.peers.scheduler.GetRun(scheduler_pb2.GetRunRequest(name=name), timeout=30)

    async def list_runs(self, parent: str, page_size: int, page_token: str) -> scheduler_pb2.ListRunsResponse:
        return await self.peers.scheduler.ListRuns(
            scheduler_pb2.ListRunsRequest(parent=parent, page_size=page_size, page_token=page_token), timeout=30
        )

    async def cancel_run(self, name: str) -> scheduler_pb2.Run:
        return await self.peers.scheduler.CancelRun(
            scheduler_pb2.CancelRunRequest(name=name, reason=run_pb2.TERMINATION_REASON_USER), timeout=30
        )

    async def watch_run(self, name: str) -> AsyncIterator[scheduler_pb2.Run]:
        async for run in self.peers.scheduler.WatchRun(scheduler_pb2.WatchRunRequest(name=name)):
            yield run

    async def run_logs(self, name: str, follow: bool) -> AsyncIterator[scheduler_pb2.StreamRunLogsResponse]:
        async for chunk in self.peers.scheduler.StreamRunLogs(
            scheduler_pb2.StreamRunLogsRequest(name=name, follow=follow)
        ):
            yield chunk

    # ---- data ----------------------------------------------------------------------------

    async def grant(
        self, account: str, location: run_pb2.ObjectLocation, mode: int, ttl_s: int, run: str = ""
    ) -> storage_pb2.Grant:
        request = storage_pb2.CreateGrantRequest(
            parent=names.account_name(account),
            run=run,
            accesses=[storage_pb2.AccessRequest(location=location, mode=mode)],  # type: ignore[arg-type]
            ttl=Duration(seconds=ttl_s),
        )
        return await self.peers.storage.CreateGrant(request, timeout=30)

    async def results_grant(self, account: str, name: str) -> storage_pb2.Grant:
        run = await self.get_run(name)
        if not run.status.HasField("results"):
            raise NotFound(f"run {name} has no results yet: it has not started")
        return await self.grant(account, run.status.results, storage_pb2.ACCESS_MODE_READ, 3600, run=name)

    async def code_grant(self, account: str, name: str) -> storage_pb2.Grant:
        run = await self.get_run(name)
        if not run.HasField("code") or not run.code.prefix:
            raise NotFound(f"run {name} was submitted without model code")
        return await self.grant(account, run.code, storage_pb2.ACCESS_MODE_READ, 3600, run=name)

    async def purge_objects(
        self, account: str, location: run_pb2.ObjectLocation, force: bool
    ) -> storage_pb2.PurgeObjectsResponse:
        request = storage_pb2.PurgeObjectsRequest(parent=names.account_name(account), location=location, force=force)
        return await self.peers.storage.PurgeObjects(request, timeout=300)

    async def list_objects(
        self, account: str, location: run_pb2.ObjectLocation, page_size: int, page_token: str
    ) -> storage_pb2.ListObjectsResponse:
        request = storage_pb2.ListObjectsRequest(
            parent=names.account_name(account), location=location, page_size=page_size, page_token=page_token
        )
        return await self.peers.storage.ListObjects(request, timeout=30)

    async def usage(
        self, account: str, run: str, page_size: int, page_token: str
    ) -> metering_pb2.ListUsageRecordsResponse:
        request = metering_pb2.ListUsageRecordsRequest(
            parent=names.account_name(account),
            run=self.run_name(account, run, "run") if run else "",
            page_size=page_size,
            page_token=page_token,
        )
        return await self.peers.metering.ListUsageRecords(request, timeout=30)


def _redacted(manifest: str, parsed: ParsedManifest) -> str:
    """The manifest as submitted, with inline credentials blanked out: they are never stored."""
    for connection in parsed.inline_connections:
        for secret in (connection.secret_access_key, connection.access_key_id):
            if secret:
                manifest = manifest.replace(secret, "****")
    return manifest
