"""The run's storage grant on the runner's side: its S3 locations, renewed before they expire.

One set of a grant's S3 credentials (or presigned URLs) lasts at most one STS session (12 h
at most), while a run may last days. The runner renews its grant with its run token
(`StorageService.RenewGrant`): before each transfer when the credentials would expire during
it, and from a background thread while the command runs. The storage service refuses once the
run has ended (the scheduler revoked the grant). Renewed credentials stay in memory: runner.json
keeps the first ones only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

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
class _Slot:
    name: str
    bucket: str
    prefix: str
    write: bool


class GrantKeeper:
    """Holds the run's S3 locations (`data`, `code`, `results`) and renews them before they expire.

    `renew` asks the storage service for fresh accesses; by default over gRPC to
    `storage_address` with the run token. A keeper without a grant name (a platform-store run,
    or an older scheduler) never renews.
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
        self._clock = clock
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._issued_s = clock()
        self.renewals = 0

    @property
    def renewable(self) -> bool:
        return bool(self._locations and self._grant and (self._storage_address or self._renew_call))

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
            self.renew()

    def renew(self) -> None:
        try:
            grant = self._renew_call()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else ""
            raise GrantError(f"cannot renew the storage grant: {code.name if code else 'UNKNOWN'}: {detail}") from None
        self._apply(grant)

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
            self._issued_s = self._clock()
            self.renewals += 1
        logger.info("renewed the storage grant")

    def _call_storage(self) -> storage_pb2.Grant:
        with grpc.insecure_channel(self._storage_address) as channel:
            stub = storage_pb2_grpc.StorageServiceStub(channel)
            request = storage_pb2.RenewGrantRequest(name=self._grant, run_token=self._run_token)
            grant: storage_pb2.Grant = stub.RenewGrant(request, timeout=_CALL_TIMEOUT_S)
            return grant
