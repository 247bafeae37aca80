"""The run's storage grant on the runner's side: its S3 locations, renewed before they expire,
and its paths on the platform's local store, used only while the storage service vouches for them.

One set of a grant's S3 credentials (or presigned URLs) lasts at most one STS session (12 h
at most), while a run may last days. The runner renews its grant with its run token
(`StorageService.RenewGrant`): before each transfer when the credentials would expire during
it, and from a background thread while the command runs. The storage service refuses once the
run has ended (the scheduler revoked the grant). Renewed credentials stay in memory: runner.json
keeps the first ones only, and loses them when the attempt ends.

A path on the local store cannot expire or be taken back by the file system, so the runner asks
(`vouch_local`, the same RenewGrant) right before it stages from the store and right before it
writes results to it: a revoked or expired grant, or a wrong token, is refused there, and only
paths inside the locations of the storage service's answer, in their mode, are used
(`check_local`). This binds the runner, our code; see docs/storage.md for what it does not bind.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from dlaas.runner.reporter import RetryPolicy
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.transfer import TransferError
from dlaas.transfer_s3 import PresignedGet, S3Location

logger = logging.getLogger(__name__)

# Renew once this share of a session has passed (and always before a transfer that could outlast it).
RENEW_AFTER = 0.5
# A transfer is started with credentials that last at least this long, else renewed first.
TRANSFER_MARGIN_S = 600.0
_RETRY_S = 30.0
_CALL_TIMEOUT_S = 30.0
# A transfer about to start waits this long for a storage service that is down or restarting.
STORAGE_RETRY = RetryPolicy(budget_s=60.0, initial_delay_s=0.2, max_delay_s=5.0)
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class GrantError(TransferError):
    """The grant could not be renewed; the message says why (never a key or the token)."""


def s3_location(access: storage_pb2.ObjectAccess) -> S3Location | None:
    """A grant's access as the transfers take it; None for a path on the platform's local store."""
    method = access.WhichOneof("method")
    if method == "presigned":
        signed = access.presigned
        return S3Location(
            endpoint=signed.endpoint,
            region="",
            bucket=signed.bucket,
            prefix=signed.prefix,
            expire_ms=signed.expire_time.ToMilliseconds(),
            presigned=True,
            objects=tuple(PresignedGet(o.key, o.size_bytes, o.etag, o.url) for o in signed.objects),
            post_url=signed.post_url,
            post_fields=tuple(sorted(signed.post_fields.items())),
        )
    if method == "s3":
        s3 = access.s3
        return S3Location(
            endpoint=s3.endpoint,
            region=s3.region,
            bucket=s3.bucket,
            prefix=s3.prefix,
            access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key,
            session_token=s3.session_token,
            expire_ms=s3.expire_time.ToMilliseconds(),
        )
    return None


@dataclass(frozen=True)
class LocalGrant:
    """The local-store folders one answer of the storage service covers, and until when.

    A location is a folder: `…/mnist` covers `…/mnist` and `…/mnist/…`, never `…/mnist-private`.
    WRITE covers reading too; READ only reading.
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...]
    expire_s: float

    @classmethod
    def from_grant(cls, grant: storage_pb2.Grant) -> LocalGrant:
        reads: list[str] = []
        writes: list[str] = []
        if not grant.HasField("revoke_time"):
            for access in grant.accesses:
                if access.WhichOneof("method") != "local" or not os.path.isabs(access.local.path):
                    continue
                folder = os.path.normpath(access.local.path)
                reads.append(folder)
                if access.mode == storage_pb2.ACCESS_MODE_WRITE:
                    writes.append(folder)
        expire_s = grant.expire_time.ToMilliseconds() / 1000 if grant.HasField("expire_time") else 0.0
        return cls(tuple(reads), tuple(writes), expire_s)

    def check(self, path: Path, *, write: bool, now_s: float) -> None:
        """Raises GrantError unless `path` is inside a folder granted for `write` (or reading)."""
        if self.expire_s and now_s >= self.expire_s:
            raise GrantError("the storage grant has expired")
        wanted = os.path.normpath(os.path.abspath(path))
        folders = self.writes if write else self.reads
        if not any(wanted == folder or wanted.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders):
            mode = "write" if write else "read"
            raise GrantError(f"the run's storage grant does not let it {mode} {wanted}")


@dataclass(frozen=True)
class _Slot:
    name: str
    bucket: str
    prefix: str
    write: bool


class GrantKeeper:
    """Holds the run's S3 locations (`data`, `code`, `results`) and renews them before they expire;
    checks its local-store paths against the storage service's latest answer.

    `renew` asks the storage service for fresh accesses; by default over gRPC to
    `storage_address` with the run token. A keeper without a grant name (an older scheduler)
    never renews, and uses no local-store path.
    """

    def __init__(
        self,
        locations: dict[str, S3Location | None],
        *,
        grant: str,
        storage_address: str,
        run_token: str,
        renew: Callable[[], storage_pb2.Grant] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._locations = {name: loc for name, loc in locations.items() if loc is not None}
        self._grant = grant
        self._storage_address = storage_address
        self._run_token = run_token
        self._renew_call = renew or self._call_storage
        self._can_call = bool(grant and (storage_address or renew is not None))
        self._clock = clock
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._issued_s = clock()
        # The local-store folders of the storage service's latest answer; None until it answered,
        # and again once it refused.
        self._local: LocalGrant | None = None
        self.renewals = 0

    @property
    def renewable(self) -> bool:
        return bool(self._locations and self._can_call)

    def get(self, name: str) -> S3Location | None:
        with self._lock:
            return self._locations.get(name)

    def fresh(self, name: str) -> Callable[[], S3Location]:
        """What a transfer calls for the current credentials of `name` (minio asks before every request)."""

        def current() -> S3Location:
            location = self.get(name)
            assert location is not None
            return location

        return current

    def ensure(self, margin_s: float = TRANSFER_MARGIN_S) -> None:
        """Renews now if any location expires within `margin_s`; raises GrantError when that fails."""
        if not self.renewable:
            return
        if self._earliest_expiry_s() - self._clock() < margin_s:
            self.renew(retry=STORAGE_RETRY)

    def renew(self, retry: RetryPolicy | None = None, *, failure: str = "cannot renew the storage grant") -> None:
        """One RenewGrant; with `retry`, tried again while the storage service is unreachable."""
        give_up = self._clock() + (retry.budget_s if retry else 0.0)
        delays = retry.delays() if retry else iter(())
        while True:
            try:
                grant = self._renew_call()
                break
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                delay = next(delays, None)
                if code in _TRANSIENT and delay is not None and self._clock() + delay < give_up:
                    logger.warning("storage unreachable (%s); asking again in %.1f s", code.name, delay)
                    if self._closing.wait(delay):
                        delays = iter(())
                    continue
                detail = exc.details() if hasattr(exc, "details") else ""
                raise GrantError(f"{failure}: {code.name if code else 'UNKNOWN'}: {detail}") from None
        self._apply(grant)

    def vouch_local(self) -> None:
        """Asks the storage service now whether the grant still holds (the run token, not revoked,
        not expired) and keeps the local-store folders it answers; GrantError when it refuses.

        Called right before staging from and writing to the platform store.
        """
        with self._lock:
            self._local = None
        if not self._can_call:
            raise GrantError("runner.json names no storage grant for its paths on the platform store")
        self.renew(retry=STORAGE_RETRY, failure="the storage service did not confirm the run's grant")

    def check_local(self, path: Path, *, write: bool) -> Path:
        """`path`, if the storage service's latest answer covers it in that mode; else GrantError."""
        with self._lock:
            local = self._local
        if local is None:
            raise GrantError("the storage service has not vouched for the run's grant")
        local.check(path, write=write, now_s=self._clock())
        return path

    def start(self) -> None:
        """Renews in the background, about halfway through each session, until `close`."""
        if not self.renewable or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="grant-renewal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(1.0)

    # --- internals -------------------------------------------------------------------------

    def _earliest_expiry_s(self) -> float:
        with self._lock:
            expiries = [loc.expire_ms / 1000 for loc in self._locations.values() if loc.expire_ms]
        return min(expiries, default=float("inf"))

    def _loop(self) -> None:
        while not self._closing.is_set():
            expiry = self._earliest_expiry_s()
            if expiry == float("inf"):
                return
            issued = self._issued_s
            due = issued + (expiry - issued) * RENEW_AFTER
            if self._closing.wait(max(0.0, due - self._clock())):
                return
            try:
                self.renew()
            except GrantError as exc:
                logger.warning("%s; retrying in %.0f s", exc, _RETRY_S)
                if "FAILED_PRECONDITION" in str(exc) or "PERMISSION_DENIED" in str(exc):
                    return  # the run ended or the token is not valid: nothing to retry
                if self._closing.wait(_RETRY_S):
                    return

    def _apply(self, grant: storage_pb2.Grant) -> None:
        renewed = [s3_location(access) for access in grant.accesses]
        with self._lock:
            for name, current in list(self._locations.items()):
                match = next(
                    (
                        loc
                        for loc, access in zip(renewed, grant.accesses, strict=True)
                        if loc is not None
                        and (loc.bucket, loc.prefix) == (current.bucket, current.prefix)
                        and (access.mode == storage_pb2.ACCESS_MODE_WRITE) == (name == "results")
                    ),
                    None,
                )
                if match is not None:
                    self._locations[name] = match
            self._local = LocalGrant.from_grant(grant)
            self._issued_s = self._clock()
            self.renewals += 1
        logger.info("renewed the storage grant")

    def _call_storage(self) -> storage_pb2.Grant:
        with grpc.insecure_channel(self._storage_address) as channel:
            stub = storage_pb2_grpc.StorageServiceStub(channel)
            request = storage_pb2.RenewGrantRequest(name=self._grant, run_token=self._run_token)
            grant: storage_pb2.Grant = stub.RenewGrant(request, timeout=_CALL_TIMEOUT_S)
            return grant
