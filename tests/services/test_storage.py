"""The storage broker through its gRPC contract: a real server on port 0, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import pytest
import sqlalchemy
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dlaas.runner.grant import GrantError, LocalGrant
from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.types.v1 import run_pb2
from services.common.db import sync_url
from services.common.errors import FieldViolation
from services.storage.app import build_server
from services.storage.domain.locations import bucket_violations, prefix_violations
from services.storage.settings import StorageSettings
from tests.support import service_channel

READ = storage_pb2.ACCESS_MODE_READ
WRITE = storage_pb2.ACCESS_MODE_WRITE


class Databases(Protocol):
    """The `databases` fixture of tests/conftest.py: a fresh database URL per service."""

    def url(self, service: str) -> str: ...


@dataclass
class Storage:
    stub: storage_pb2_grpc.StorageServiceAsyncStub
    objects: Path
    database_url: str

    def grant_rows(self) -> int:
        engine = sqlalchemy.create_engine(sync_url(self.database_url))
        try:
            with engine.connect() as connection:
                return int(connection.scalar(sqlalchemy.text("SELECT count(*) FROM grants")) or 0)
        finally:
            engine.dispose()


@pytest.fixture
async def storage(databases: Databases, tmp_path: Path) -> AsyncIterator[Storage]:
    url = databases.url("storage")
    objects = tmp_path / "objects"
    service = await build_server(StorageSettings(port=0, database_url=url, objects_dir=str(objects)))
    await service.start()
    channel = service_channel(service.address)
    try:
        yield Storage(storage_pb2_grpc.StorageServiceStub(channel), objects, url)
    finally:
        await channel.close()
        await service.stop(grace=0)


def location(bucket: str, prefix: str = "", connection: str = "") -> run_pb2.ObjectLocation:
    return run_pb2.ObjectLocation(connection=connection, bucket=bucket, prefix=prefix)


def access(
    bucket: str, prefix: str = "", mode: storage_pb2.AccessMode.ValueType = READ, connection: str = ""
) -> storage_pb2.AccessRequest:
    return storage_pb2.AccessRequest(location=location(bucket, prefix, connection), mode=mode)


def grant_request(
    account: str, *accesses: storage_pb2.AccessRequest, ttl_s: int = 3600, request_id: str = "", run: str = ""
) -> storage_pb2.CreateGrantRequest:
    return storage_pb2.CreateGrantRequest(
        parent=f"accounts/{account}", run=run, accesses=accesses, ttl=Duration(seconds=ttl_s), request_id=request_id
    )


def status_of(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and the BadRequest field violations (field -> description) of a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, error
    reason = ""
    violations: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.update({v.field: v.description for v in bad.field_violations})
    return reason, violations


async def test_grant_paths_are_per_account_and_per_bucket(storage: Storage) -> None:
    before_ms = time.time_ns() // 1_000_000
    alice = await storage.stub.CreateGrant(
        grant_request(
            "alice",
            access("training-data", "mnist/v1", READ),
            access("results", "run-1/", WRITE),
            run="accounts/alice/runs/run-1",
            ttl_s=600,
        )
    )
    bob = await storage.stub.CreateGrant(grant_request("bob", access("training-data", "mnist/v1", READ)))

    assert alice.name.startswith("accounts/alice/grants/")
    assert alice.run == "accounts/alice/runs/run-1"
    assert [a.local.path for a in alice.accesses] == [
        str(storage.objects / "alice" / "training-data" / "mnist" / "v1"),
        str(storage.objects / "alice" / "results" / "run-1"),
    ]
    assert [a.mode for a in alice.accesses] == [READ, WRITE]
    assert alice.accesses[1].location == location("results", "run-1/")
    assert bob.accesses[0].local.path == str(storage.objects / "bob" / "training-data" / "mnist" / "v1")
    # WRITE prepares the directory; READ hands out the path whether or not it exists yet.
    assert (storage.objects / "alice" / "results" / "run-1").is_dir()
    assert not (storage.objects / "alice" / "training-data").exists()
    expire_ms = alice.expire_time.ToMilliseconds()
    assert before_ms + 600_000 <= expire_ms <= time.time_ns() // 1_000_000 + 600_000
    assert not alice.HasField("revoke_time")
    assert storage.grant_rows() == 2


async def test_create_grant_is_idempotent_on_request_id(storage: Storage) -> None:
    request = grant_request("alice", access("results", "run-1", WRITE), request_id="req-1")
    first = await storage.stub.CreateGrant(request)
    again = await storage.stub.CreateGrant(request)
    # A retry gets the stored grant unchanged, even if it asks for something else.
    changed = await storage.stub.CreateGrant(grant_request("alice", access("other", "x"), request_id="req-1"))
    other_key = await storage.stub.CreateGrant(grant_request("alice", access("results", "run-1", WRITE)))
    other_account = await storage.stub.CreateGrant(grant_request("bob", access("results", "run-1"), request_id="req-1"))

    assert again == first
    assert changed == first
    assert other_key.name != first.name
    assert other_account.name.startswith("accounts/bob/grants/")
    assert storage.grant_rows() == 3


async def test_revoke_grant(storage: Storage) -> None:
    request = grant_request("alice", access("data"), request_id="r1")
    grant = await storage.stub.CreateGrant(request)
    revoked = await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant.name))
    again = await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant.name))

    assert revoked.name == grant.name
    assert revoked.HasField("revoke_time")
    assert revoked.revoke_time.ToMilliseconds() <= grant.expire_time.ToMilliseconds()
    assert again.revoke_time == revoked.revoke_time  # the first revocation stands
    assert list(revoked.accesses) == list(grant.accesses)
    # A retried CreateGrant answers with the grant as stored: revoked.
    assert await storage.stub.CreateGrant(request) == revoked


async def test_revoke_refuses_other_accounts_and_unknown_grants(storage: Storage) -> None:
    grant = await storage.stub.CreateGrant(grant_request("alice", access("data")))
    grant_id = grant.name.rsplit("/", 1)[1]
    for name in (f"accounts/bob/grants/{grant_id}", "accounts/alice/grants/0123456789abcdef0123456789abcdef"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=name))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=f"grants/{grant_id}"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in status_of(caught.value)[1]
    # Alice's grant is untouched.
    revoked = await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant.name))
    assert revoked.HasField("revoke_time")


async def test_write_and_list_objects(storage: Storage) -> None:
    blobs = {"code/model.zip": b"PK\x03\x04 model", "code/a/b.txt": b"b", "code/README": b"", "other/x": b"x"}
    for key, data in blobs.items():
        info = await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("models", key), data=data)
        )
        assert (info.bucket, info.key, info.size_bytes) == ("models", key, len(data))
        assert info.sha256 == hashlib.sha256(data).hexdigest()
    overwritten = b"second version"
    await storage.stub.WriteObject(
        storage_pb2.WriteObjectRequest(
            parent="accounts/alice", location=location("models", "code/a/b.txt"), data=overwritten
        )
    )
    blobs["code/a/b.txt"] = overwritten

    listing = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("models", "code/"))
    )
    assert [o.key for o in listing.objects] == ["code/README", "code/a/b.txt", "code/model.zip"]
    for obj in listing.objects:
        assert obj.bucket == "models"
        assert obj.size_bytes == len(blobs[obj.key])
        assert obj.sha256 == hashlib.sha256(blobs[obj.key]).hexdigest()
        assert abs(obj.update_time.ToMilliseconds() - time.time_ns() // 1_000_000) < 60_000
    assert not listing.next_page_token
    # What a write grant's holder sees on disk is what WriteObject wrote.
    grant = await storage.stub.CreateGrant(grant_request("alice", access("models", "code", READ)))
    assert (Path(grant.accesses[0].local.path) / "a" / "b.txt").read_bytes() == overwritten

    whole_bucket = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("models"))
    )
    assert [o.key for o in whole_bucket.objects] == sorted(blobs)
    # Prefixes are key prefixes, as on S3.
    partial = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("models", "code/mo"))
    )
    assert [o.key for o in partial.objects] == ["code/model.zip"]
    for parent, bucket in (("accounts/bob", "models"), ("accounts/alice", "no-such-bucket")):
        empty = await storage.stub.ListObjects(storage_pb2.ListObjectsRequest(parent=parent, location=location(bucket)))
        assert list(empty.objects) == []


async def test_list_objects_pages(storage: Storage) -> None:
    keys = [f"results/file-{i:02d}" for i in range(7)]
    for key in keys:
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("out", key), data=key.encode())
        )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await storage.stub.ListObjects(
            storage_pb2.ListObjectsRequest(
                parent="accounts/alice", location=location("out", "results/"), page_size=3, page_token=token
            )
        )
        pages += 1
        seen.extend(o.key for o in page.objects)
        token = page.next_page_token
        if not token:
            break
    assert seen == keys
    assert pages == 3

    first = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("out"), page_size=2)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.ListObjects(
            storage_pb2.ListObjectsRequest(
                parent="accounts/alice", location=location("out", "results/"), page_token=first.next_page_token
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in status_of(caught.value)[1]


@pytest.mark.parametrize(
    ("bucket", "prefix", "field"),
    [
        ("results", "../x", "prefix"),
        ("results", "/../abs", "prefix"),
        ("results", "a/../../b", "prefix"),
        ("results", "a\\b", "prefix"),
        ("results", "a\x00b", "prefix"),
        ("Results", "x", "bucket"),
        ("..", "x", "bucket"),
        ("", "x", "bucket"),
    ],
)
async def test_bad_locations_are_refused_and_nothing_is_stored(
    storage: Storage, bucket: str, prefix: str, field: str
) -> None:
    request = grant_request("alice", access("results", "run-1", WRITE), access(bucket, prefix, WRITE), request_id="r1")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.CreateGrant(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = status_of(caught.value)
    assert list(violations) == [f"accesses[1].location.{field}"]
    assert storage.grant_rows() == 0
    assert not storage.objects.joinpath("alice").exists()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location(bucket, prefix), data=b"x")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(status_of(caught.value)[1]) == [f"location.{field}"]


async def test_every_bad_field_is_reported(storage: Storage) -> None:
    request = storage_pb2.CreateGrantRequest(
        parent="accounts/alice",
        run="accounts/bob/runs/run-1",
        accesses=[
            access("ok-bucket", "data"),
            access("x", "data"),
            storage_pb2.AccessRequest(location=location("ok-bucket")),
            storage_pb2.AccessRequest(mode=READ),
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.CreateGrant(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, violations = status_of(caught.value)
    assert reason == "INVALID_ARGUMENT"
    assert sorted(violations) == [
        "accesses[1].location.bucket",
        "accesses[2].mode",
        "accesses[3].location",
        "run",
        "ttl",
    ]
    longest = StorageSettings().max_grant_ttl_s
    for ttl in (Duration(seconds=0), Duration(seconds=longest + 1), Duration(seconds=-5)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.stub.CreateGrant(
                storage_pb2.CreateGrantRequest(parent="accounts/alice", accesses=[access("data")], ttl=ttl)
            )
        assert list(status_of(caught.value)[1]) == ["ttl"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.CreateGrant(grant_request("Alice!", access("data")))
    assert list(status_of(caught.value)[1]) == ["parent"]
    assert storage.grant_rows() == 0


@pytest.mark.parametrize("connection", ["minio-prod", "inline-training_data"])
async def test_unknown_connection_is_a_failed_precondition(storage: Storage, connection: str) -> None:
    request = grant_request("alice", access("results", "run-1", WRITE), access("data", "x", READ, connection))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.CreateGrant(request)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(caught.value)[0] == "CONNECTION_NOT_FOUND"
    assert f"connection {connection} is not registered" in (caught.value.details() or "")
    assert storage.grant_rows() == 0
    assert not storage.objects.joinpath("alice").exists()

    calls: list[Awaitable[object]] = [
        storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("data", "k", connection))
        ),
        storage.stub.ListObjects(
            storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("data", "", connection))
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_write_object_limits(storage: Storage) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(
                parent="accounts/alice", location=location("models", "big"), data=b"\0" * (64 * 1024 * 1024 + 1)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(status_of(caught.value)[1]) == ["data"]

    for key in ("", "dir/"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.stub.WriteObject(
                storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("models", key), data=b"x")
            )
        assert list(status_of(caught.value)[1]) == ["location.prefix"]

    await storage.stub.WriteObject(
        storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("models", "a/b"), data=b"x")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("models", "a/b/c"), data=b"y")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(caught.value)[0] == "OBJECT_PATH_CONFLICT"
    assert list(storage.objects.joinpath("alice", "models").rglob("*")) == [
        storage.objects / "alice" / "models" / "a",
        storage.objects / "alice" / "models" / "a" / "b",
    ]


@pytest.mark.parametrize(
    "bucket",
    ["abc", "my-bucket.v2", "ffdl_training_data", "a" * 63, "123"],
)
def test_bucket_names_accepted(bucket: str) -> None:
    assert bucket_violations(bucket, "bucket") == []


@pytest.mark.parametrize(
    "bucket",
    ["ab", "a" * 64, "UPPER", "-start", "end.", "two..dots", "192.168.1.2", "sp ace", "a/b"],
)
def test_bucket_names_refused(bucket: str) -> None:
    assert [v.field for v in bucket_violations(bucket, "bucket")] == ["bucket"]


@pytest.mark.parametrize("prefix", ["", "a", "a/", "a/b/c.txt", "a..b/c", ".hidden/x", "x" * 1024])
def test_prefixes_accepted(prefix: str) -> None:
    assert prefix_violations(prefix, "prefix") == []


@pytest.mark.parametrize(
    "prefix", ["..", "../x", "a/..", "a/../b", "a\\b", "a\x00b", "tab\tname", "x" * 1025, "é" * 513]
)
def test_prefixes_refused(prefix: str) -> None:
    violations = prefix_violations(prefix, "prefix")
    assert violations and all(isinstance(v, FieldViolation) and v.field == "prefix" for v in violations)


async def test_a_location_is_normalized_before_it_is_checked_granted_or_written(storage: Storage) -> None:
    """A leading '/', empty and '.' segments name the same place as the one spelling: the grant
    answers that spelling, and data written either way lands there. Unicode stays as written; a
    prefix that names nothing inside the bucket is refused, never taken for the whole bucket."""
    grant = await storage.stub.CreateGrant(
        grant_request("alice", access("results", "/run-1//out/./", WRITE), run="accounts/alice/runs/run-1")
    )
    assert grant.accesses[0].location == location("results", "run-1/out/")
    assert grant.accesses[0].local.path == str(storage.objects / "alice" / "results" / "run-1" / "out")
    decomposed = "cafe\u0301"  # "café" as macOS spells file names: a key of its own
    for written in (f"//run-1/out/./{decomposed}.bin", f"run-1/out/{decomposed}.bin"):
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(parent="accounts/alice", location=location("results", written), data=b"w")
        )
    listed = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("results", "./run-1//out"))
    )
    assert [o.key for o in listed.objects] == [f"run-1/out/{decomposed}.bin"]
    for nothing in ("/", ".", "//./"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await storage.stub.PurgeObjects(
                storage_pb2.PurgeObjectsRequest(
                    parent="accounts/alice", location=location("results", nothing), force=True
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "whole bucket" in status_of(caught.value)[1]["location.prefix"]
    assert (storage.objects / "alice" / "results" / "run-1" / "out" / f"{decomposed}.bin").read_bytes() == b"w"


async def test_concurrent_retries_store_one_grant(storage: Storage) -> None:
    request = grant_request("alice", access("results", "run-7", WRITE), request_id="same")
    grants = await asyncio.gather(*(storage.stub.CreateGrant(request) for _ in range(8)))

    assert len({grant.name for grant in grants}) == 1
    assert storage.grant_rows() == 1


async def test_links_out_of_a_bucket_are_not_followed(storage: Storage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    grant = await storage.stub.CreateGrant(grant_request("alice", access("results", "run-1", WRITE)))
    # A learner holding the write grant plants links in its directory.
    Path(grant.accesses[0].local.path, "escape").symlink_to(outside)
    Path(grant.accesses[0].local.path, "secret-link").symlink_to(outside / "secret")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.CreateGrant(grant_request("alice", access("results", "run-1/escape/x", READ)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(
                parent="accounts/alice", location=location("results", "run-1/escape/new"), data=b"x"
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    listing = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(parent="accounts/alice", location=location("results"))
    )
    assert list(listing.objects) == []


# --- grants on the local store: confirmed for their run's runner while live -------------------------


def run_grant_request(
    account: str, run_id: str, token: str, *accesses: storage_pb2.AccessRequest, ttl: Duration | None = None
) -> storage_pb2.CreateGrantRequest:
    """A grant as the scheduler asks for one: for a run, with the SHA-256 of its run token."""
    return storage_pb2.CreateGrantRequest(
        parent=f"accounts/{account}",
        run=f"accounts/{account}/runs/{run_id}",
        accesses=accesses,
        ttl=ttl or Duration(seconds=600),
        run_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
    )


async def confirm(storage: Storage, name: str, token: str) -> LocalGrant:
    """What the runner does before it stages from or writes to the local store."""
    answer = await storage.stub.RenewGrant(storage_pb2.RenewGrantRequest(name=name, run_token=token))
    return LocalGrant.from_grant(answer)


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), status_of(caught.value)[0]


async def test_a_local_grant_reads_its_data_writes_its_results_and_nothing_else(storage: Storage) -> None:
    a = await storage.stub.CreateGrant(
        run_grant_request(
            "alice", "run-a", "token-a", access("training-data", "mnist", READ), access("results", "run-a", WRITE)
        )
    )
    b = await storage.stub.CreateGrant(
        run_grant_request(
            "alice", "run-b", "token-b", access("training-data", "mnist", READ), access("results", "run-b", WRITE)
        )
    )
    alice = storage.objects / "alice"
    now = time.time()

    granted = await confirm(storage, a.name, "token-a")

    granted.check(alice / "training-data" / "mnist" / "train.csv", write=False, now_s=now)
    granted.check(alice / "results" / "run-a" / "model" / "weights.bin", write=True, now_s=now)
    for path, write in [
        (alice / "training-data" / "mnist-private" / "train.csv", False),
        (alice / "training-data" / "other", False),
        (alice / "training-data" / "mnist" / "train.csv", True),
        (alice / "results" / "run-b" / "weights.bin", True),
        (alice / "results" / "run-b" / "weights.bin", False),
        (alice / "results" / "run-a2", True),
        (storage.objects / "bob" / "training-data" / "mnist", False),
    ]:
        with pytest.raises(GrantError):
            granted.check(path, write=write, now_s=now)
    # Run B's token does not confirm run A's grant, nor a guess; an unknown grant answers alike.
    for name, token in ((a.name, "token-b"), (a.name, "guess"), (a.name.rsplit("/", 1)[0] + "/" + "0" * 32, "token-a")):
        assert await refusal(confirm(storage, name, token)) == (grpc.StatusCode.PERMISSION_DENIED, "RUN_TOKEN_INVALID")

    # Run A ended: its grant is revoked and no longer confirmed; run B's still is.
    await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=a.name))
    revoked = await refusal(confirm(storage, a.name, "token-a"))
    assert revoked == (grpc.StatusCode.FAILED_PRECONDITION, "GRANT_REVOKED")
    (await confirm(storage, b.name, "token-b")).check(alice / "results" / "run-b", write=True, now_s=time.time())


async def test_an_expired_local_grant_is_refused(storage: Storage) -> None:
    grant = await storage.stub.CreateGrant(
        run_grant_request(
            "alice", "run-a", "token-a", access("results", "run-a", WRITE), ttl=Duration(nanos=500_000_000)
        )
    )
    granted = await confirm(storage, grant.name, "token-a")
    results = storage.objects / "alice" / "results" / "run-a"
    granted.check(results, write=True, now_s=time.time())

    await asyncio.sleep(0.7)

    expired = await refusal(confirm(storage, grant.name, "token-a"))
    assert expired == (grpc.StatusCode.FAILED_PRECONDITION, "GRANT_EXPIRED")
    # An answer the runner already holds stops covering anything at the grant's expiry.
    with pytest.raises(GrantError, match="expired"):
        granted.check(results, write=True, now_s=time.time())
