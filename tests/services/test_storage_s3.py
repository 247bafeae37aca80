"""Connections and S3 grants, through the storage service's gRPC contract, against a real Ceph RGW.

What a grant's credentials may do is checked with the plain minio client, as any holder of
them could use them: read inside the data prefix only, write inside the run's results prefix
only, nothing after expiry or revocation. A grant outlives one set of its credentials: with a
2 s session the first credentials stop after 2 s, and the run token renews them until the grant
itself ends or is revoked. Purges delete under a prefix taken as a folder, for the caller's
account only; an inline connection's rotated secret replaces the kept one.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy
from minio import Minio
from minio.error import S3Error
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from dlaas.storage.v1 import storage_pb2, storage_pb2_grpc
from dlaas.transfer import TransferError
from dlaas.transfer_s3 import CRC_METADATA, PART_SIZE, S3Location, UploadJournal, download_object, upload_file
from dlaas.types.v1 import run_pb2
from services.common.db import sync_url
from services.storage.adapters.db import rotate_keys
from services.storage.adapters.secrets import key_id
from services.storage.app import build_server, key_ring
from services.storage.settings import StorageSettings
from tests.s3 import REGION, S3Server
from tests.services.test_storage import READ, WRITE, Databases, access, grant_request, status_of
from tests.support import service_channel

SECRET = "planted-SECRET-" + uuid.uuid4().hex
KEY_A = "a" * 64
KEY_B = "b" * 64


@dataclass
class Storage:
    stub: storage_pb2_grpc.StorageServiceAsyncStub
    database_url: str

    def raw_rows(self, table: str) -> str:
        engine = sqlalchemy.create_engine(sync_url(self.database_url))
        try:
            with engine.connect() as connection:
                return repr(connection.execute(sqlalchemy.text(f"SELECT * FROM {table}")).all())  # noqa: S608
        finally:
            engine.dispose()


StorageFactory = Callable[..., Any]


@pytest.fixture
async def storage_factory(databases: Databases, tmp_path: Path) -> AsyncIterator[StorageFactory]:
    url = databases.url("storage")
    started: list[tuple[Any, Any]] = []

    async def start(**settings: Any) -> Storage:
        service = await build_server(
            StorageSettings(port=0, database_url=url, objects_dir=str(tmp_path / "objects"), **settings)
        )
        await service.start()
        channel = service_channel(service.address)
        started.append((service, channel))
        return Storage(storage_pb2_grpc.StorageServiceStub(channel), url)

    async def stop_all() -> None:
        for service, channel in started:
            await channel.close()
            await service.stop(grace=0)

    try:
        yield start
    finally:
        await stop_all()


def connection_request(
    account: str, connection_id: str, endpoint: str, key: str, secret: str, request_id: str = "", region: str = ""
) -> storage_pb2.CreateConnectionRequest:
    return storage_pb2.CreateConnectionRequest(
        parent=f"accounts/{account}",
        connection_id=connection_id,
        connection=storage_pb2.Connection(
            endpoint=endpoint, region=region, access_key_id=key, secret_access_key=secret
        ),
        request_id=request_id,
    )


# --- connections --------------------------------------------------------------------------------


async def test_connection_secrets_are_sealed_at_rest_and_never_returned(storage_factory: StorageFactory) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    access_key = "AKIA" + uuid.uuid4().hex[:16].upper()

    created = await storage.stub.CreateConnection(
        connection_request("alice", "rgw", "http://127.0.0.1:9", access_key, SECRET, request_id="r1")
    )
    again = await storage.stub.CreateConnection(
        connection_request("alice", "rgw", "http://127.0.0.1:9", access_key, SECRET, request_id="r1")
    )
    listed = await storage.stub.ListConnections(storage_pb2.ListConnectionsRequest(parent="accounts/alice"))
    others = await storage.stub.ListConnections(storage_pb2.ListConnectionsRequest(parent="accounts/bob"))
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await storage.stub.CreateConnection(
            connection_request("alice", "rgw", "http://127.0.0.1:9", access_key, SECRET, request_id="r2")
        )

    assert created.name == "accounts/alice/connections/rgw"
    assert created.access_key_hint == "…" + access_key[-4:]
    assert created.access_key_id == "" and created.secret_access_key == ""
    assert again == created
    assert list(listed.connections) == [created]
    assert not others.connections
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    for answer in (created, listed):
        assert SECRET not in str(answer) and access_key not in str(answer)
    raw = storage.raw_rows("connections")
    assert SECRET not in raw and access_key not in raw
    assert f"v1.{key_id(bytes.fromhex(KEY_A))}." in raw

    await storage.stub.DeleteConnection(storage_pb2.DeleteConnectionRequest(name=created.name))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await storage.stub.DeleteConnection(storage_pb2.DeleteConnectionRequest(name=created.name))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (
        await storage.stub.ListConnections(storage_pb2.ListConnectionsRequest(parent="accounts/alice"))
    ).connections


async def test_create_connection_names_every_bad_field_without_echoing_keys(storage_factory: StorageFactory) -> None:
    storage = await storage_factory(encryption_key=KEY_A)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await storage.stub.CreateConnection(
            connection_request("alice", "Bad_Name", "ftp://user:pw@host/x", "", "with space " + SECRET)
        )

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = status_of(error.value)
    assert set(violations) == {
        "connection_id",
        "connection.endpoint",
        "connection.access_key_id",
        "connection.secret_access_key",
    }
    assert SECRET not in str(error.value.details()) + repr(violations)


async def test_key_rotation_reseals_every_secret(storage_factory: StorageFactory, tmp_path: Path) -> None:
    first = await storage_factory(encryption_key=KEY_A)
    await first.stub.CreateConnection(connection_request("alice", "one", "http://127.0.0.1:9", "AK1", SECRET))
    await first.stub.CreateConnection(connection_request("alice", "two", "http://127.0.0.1:9", "AK2", SECRET))

    rotated_settings = StorageSettings(
        database_url=first.database_url, objects_dir=str(tmp_path / "objects"), encryption_key=KEY_B,
        previous_encryption_keys=[KEY_A],
    )  # fmt: skip
    keys = key_ring(rotated_settings)
    engine = create_async_engine(_async_url(first.database_url))
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        rewritten = await rotate_keys(sessions, keys)
        again = await rotate_keys(sessions, keys)
    finally:
        await engine.dispose()
    raw = first.raw_rows("connections")
    only_new = await storage_factory(encryption_key=KEY_B)
    listed = await only_new.stub.ListConnections(storage_pb2.ListConnectionsRequest(parent="accounts/alice"))

    assert (rewritten, again) == (2, 0)
    assert f"v1.{key_id(bytes.fromhex(KEY_B))}." in raw and f"v1.{key_id(bytes.fromhex(KEY_A))}." not in raw
    assert [c.name.rsplit("/", 1)[-1] for c in listed.connections] == ["one", "two"]


def _async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


# --- grants on a real S3 server --------------------------------------------------------------


def _minio(server: S3Server, key: str, secret: str, token: str | None = None) -> Minio:
    return Minio(server.endpoint, access_key=key, secret_key=secret, session_token=token, secure=False, region=REGION)


def _as_holder(server: S3Server, granted: storage_pb2.ObjectAccess) -> Minio:
    s3 = granted.s3
    return _minio(server, s3.access_key_id, s3.secret_access_key, s3.session_token)


def _denied(action: Callable[[], object]) -> bool:
    try:
        action()
    except S3Error as exc:
        return exc.code == "AccessDenied"
    return False


@dataclass
class Store:
    admin: Minio
    data: str
    results: str


@pytest.fixture
def store(s3_server: S3Server) -> Store:
    admin = _minio(s3_server, s3_server.admin.access_key, s3_server.admin.secret_key)
    suffix = uuid.uuid4().hex[:8]
    data, results = f"data-{suffix}", f"results-{suffix}"
    for bucket in (data, results):
        admin.make_bucket(bucket)
    for key in ("mnist/train.csv", "mnist/sub/test.csv", "mnist-private/secret.csv", "other/x.csv"):
        admin.put_object(data, key, io.BytesIO(b"1,2,3\n"), 6)
    admin.put_object(results, "run-b/model.pt", io.BytesIO(b"theirs"), 6)
    return Store(admin, data, results)


async def _register(storage: Storage, server: S3Server) -> None:
    await storage.stub.CreateConnection(
        connection_request("alice", "rgw", server.url, server.admin.access_key, server.admin.secret_key, region=REGION)
    )


def _run_grant(store: Store, run: str, ttl_s: int = 3600) -> storage_pb2.CreateGrantRequest:
    return grant_request(
        "alice",
        access(store.data, "mnist", READ, connection="rgw"),
        access(store.results, run, WRITE, connection="rgw"),
        ttl_s=ttl_s,
        run=f"accounts/alice/runs/{run}",
    )


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_s3_grant_reads_its_data_and_writes_its_results_only(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)

    grant = await storage.stub.CreateGrant(_run_grant(store, "run-a"))
    data, results = grant.accesses
    reader, writer = _as_holder(s3_server, data), _as_holder(s3_server, results)

    assert (data.s3.bucket, data.s3.prefix, results.s3.bucket, results.s3.prefix) == (
        store.data, "mnist", store.results, "run-a"
    )  # fmt: skip
    assert data.s3.endpoint == s3_server.url and data.s3.expire_time == grant.expire_time
    # Reads inside the data prefix; listing it works.
    assert reader.get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"
    assert sorted(o.object_name for o in reader.list_objects(store.data, prefix="mnist/", recursive=True)) == [
        "mnist/sub/test.csv",
        "mnist/train.csv",
    ]
    # Denied outside it, a sibling prefix that merely starts alike included, and for writes.
    assert _denied(lambda: reader.get_object(store.data, "other/x.csv").read())
    assert _denied(lambda: reader.get_object(store.data, "mnist-private/secret.csv").read())
    assert _denied(lambda: list(reader.list_objects(store.data, prefix="other/")))
    assert _denied(lambda: reader.put_object(store.data, "mnist/new.csv", io.BytesIO(b"x"), 1))
    # Writes under its own results prefix, multipart included.
    writer.put_object(store.results, "run-a/model.pt", io.BytesIO(b"mine"), 4)
    big = 11 << 20
    writer.put_object(store.results, "run-a/big.bin", io.BytesIO(b"\0" * big), big, part_size=5 << 20)
    assert store.admin.stat_object(store.results, "run-a/big.bin").size == big
    # Denied elsewhere: another run's results (read or write), a prefix sharing its start, the bucket root.
    assert _denied(lambda: writer.put_object(store.results, "run-b/model.pt", io.BytesIO(b"x"), 1))
    assert _denied(lambda: writer.get_object(store.results, "run-b/model.pt").read())
    assert _denied(lambda: writer.put_object(store.results, "run-a2/model.pt", io.BytesIO(b"x"), 1))
    assert _denied(lambda: writer.put_object(store.results, "model.pt", io.BytesIO(b"x"), 1))
    assert store.admin.get_object(store.results, "run-b/model.pt").read() == b"theirs"


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_s3_grant_stops_working_when_it_expires(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)

    grant = await storage.stub.CreateGrant(_run_grant(store, "run-a", ttl_s=2))
    reader = _as_holder(s3_server, grant.accesses[0])
    assert reader.get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"
    await asyncio.sleep(max(0.0, grant.expire_time.ToMilliseconds() / 1000 - _now_s()) + 1.2)

    assert _denied(lambda: reader.get_object(store.data, "mnist/train.csv").read())
    assert _denied(lambda: _as_holder(s3_server, grant.accesses[1]).put_object(
        store.results, "run-a/late.txt", io.BytesIO(b"x"), 1
    ))  # fmt: skip


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_s3_grant_stops_working_when_revoked(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)
    grant = await storage.stub.CreateGrant(_run_grant(store, "run-a"))
    other = await storage.stub.CreateGrant(_run_grant(store, "run-c"))
    reader = _as_holder(s3_server, grant.accesses[0])
    assert reader.get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"

    revoked = await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant.name))

    assert revoked.HasField("revoke_time")
    assert _denied(lambda: reader.get_object(store.data, "mnist/train.csv").read())
    assert _denied(lambda: _as_holder(s3_server, grant.accesses[1]).put_object(
        store.results, "run-a/after.txt", io.BytesIO(b"x"), 1
    ))  # fmt: skip
    # Another run's grant is untouched.
    assert _as_holder(s3_server, other.accesses[0]).get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_s3_grant_retry_answers_the_same_credentials_and_keeps_them_sealed(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)
    request = _run_grant(store, "run-a")
    request.request_id = "accounts/alice/runs/run-a/attempts/1"

    first = await storage.stub.CreateGrant(request)
    again = await storage.stub.CreateGrant(request)

    assert again == first
    raw = storage.raw_rows("grants") + storage.raw_rows("connections")
    for secret in (
        first.accesses[0].s3.secret_access_key,
        first.accesses[0].s3.session_token,
        s3_server.admin.secret_key,
    ):
        assert secret not in raw


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_grant_on_an_unregistered_connection_is_refused(storage_factory: StorageFactory) -> None:
    storage = await storage_factory(encryption_key=KEY_A)

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await storage.stub.CreateGrant(grant_request("alice", access("data", "x", READ, connection="nope")))

    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(error.value)[0] == "CONNECTION_NOT_FOUND"


def _now_s() -> float:
    return time.time()


# --- presigned URLs (a connection marked presigned_urls: stores without STS) ---------------------


def _http(method: str, url: str, **kwargs: Any) -> Any:
    import urllib3

    return urllib3.PoolManager().request(method, url, retries=False, **kwargs)


def _post(granted: storage_pb2.ObjectAccess, key: str, data: bytes) -> int:
    fields: dict[str, Any] = {**dict(granted.presigned.post_fields), "key": key, "file": ("f", data)}
    return int(_http("POST", granted.presigned.post_url, fields=fields).status)


async def _register_presigned(storage: Storage, server: S3Server) -> None:
    request = connection_request(
        "alice", "rgw", server.url, server.admin.access_key, server.admin.secret_key, region=REGION
    )
    request.connection.presigned_urls = True
    created = await storage.stub.CreateConnection(request)
    assert created.presigned_urls


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_presigned_grant_reads_its_objects_and_posts_under_its_prefix_only(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register_presigned(storage, s3_server)

    grant = await storage.stub.CreateGrant(_run_grant(store, "run-a"))
    data, results = grant.accesses
    urls = {o.key: o.url for o in data.presigned.objects}

    assert sorted(urls) == ["mnist/sub/test.csv", "mnist/train.csv"]
    assert _http("GET", urls["mnist/train.csv"]).data == b"1,2,3\n"
    assert _post(results, "run-a/model.pt", b"mine") in (200, 201, 204)
    assert store.admin.get_object(store.results, "run-a/model.pt").read() == b"mine"
    # The POST policy refuses keys outside the run's prefix: another run's, a prefix sharing its start.
    assert _post(results, "run-b/model.pt", b"x") == 403
    assert _post(results, "run-a2/model.pt", b"x") == 403
    assert store.admin.get_object(store.results, "run-b/model.pt").read() == b"theirs"
    assert not data.presigned.post_url and not results.presigned.objects


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_tampered_presigned_url_is_denied(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register_presigned(storage, s3_server)
    grant = await storage.stub.CreateGrant(_run_grant(store, "run-a"))
    url = next(o.url for o in grant.accesses[0].presigned.objects if o.key == "mnist/train.csv")
    signature = url.split("X-Amz-Signature=")[1][:64]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]

    tampered = [
        url.replace("mnist/train.csv", "other/x.csv"),  # another object
        url.replace("mnist/train.csv", "mnist-private/secret.csv"),
        url.replace("X-Amz-Expires=", "X-Amz-Expires=9"),  # a longer life
        url.replace(signature, flipped),  # a forged signature
    ]

    assert _http("GET", url).status == 200
    for forged in tampered:
        assert forged != url
        assert _http("GET", forged).status == 403, forged.split("?")[0]


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_presigned_grant_stops_working_when_it_expires(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register_presigned(storage, s3_server)
    grant = await storage.stub.CreateGrant(_run_grant(store, "run-a", ttl_s=2))
    url = grant.accesses[0].presigned.objects[0].url
    assert _http("GET", url).status == 200

    await asyncio.sleep(max(0.0, grant.expire_time.ToMilliseconds() / 1000 - _now_s()) + 1.2)

    assert _http("GET", url).status == 403
    assert _post(grant.accesses[1], "run-a/late.txt", b"x") == 403


# --- renewal, purges, rotated inline secrets ---------------------------------------------------

TOKEN = "run-token-" + uuid.uuid4().hex


def _renewable(request: storage_pb2.CreateGrantRequest) -> storage_pb2.CreateGrantRequest:
    request.run_token_sha256 = hashlib.sha256(TOKEN.encode()).hexdigest()
    return request


async def _sleep_until_ms(ms: int) -> None:
    await asyncio.sleep(max(0.0, ms / 1000 - time.time()) + 1.2)


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_renewed_grant_keeps_working_past_the_first_credentials_expiry(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A, grant_session_s=2)
    await _register(storage, s3_server)

    grant = await storage.stub.CreateGrant(_renewable(_run_grant(store, "run-a", ttl_s=120)))
    first = _as_holder(s3_server, grant.accesses[0])
    assert first.get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"
    # One session (2 s) is shorter than the grant (120 s): the credentials say so.
    assert grant.accesses[0].s3.expire_time.ToMilliseconds() < grant.expire_time.ToMilliseconds() - 100_000
    await _sleep_until_ms(grant.accesses[0].s3.expire_time.ToMilliseconds())
    assert _denied(lambda: first.get_object(store.data, "mnist/train.csv").read())

    renewed = await storage.stub.RenewGrant(storage_pb2.RenewGrantRequest(name=grant.name, run_token=TOKEN))

    assert renewed.name == grant.name and renewed.expire_time == grant.expire_time
    reader, writer = _as_holder(s3_server, renewed.accesses[0]), _as_holder(s3_server, renewed.accesses[1])
    assert reader.get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"
    writer.put_object(store.results, "run-a/late.txt", io.BytesIO(b"x"), 1)
    # Still scoped as the grant: not another prefix, not another run's results.
    assert _denied(lambda: reader.get_object(store.data, "mnist-private/secret.csv").read())
    assert _denied(lambda: writer.put_object(store.results, "run-b/x.txt", io.BytesIO(b"x"), 1))
    # The renewed credentials are kept sealed, and the token only as its hash.
    assert TOKEN not in storage.raw_rows("grants")
    assert renewed.accesses[0].s3.secret_access_key not in storage.raw_rows("grants")


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_renewal_needs_the_run_token_and_a_live_grant(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A, grant_session_s=2)
    await _register(storage, s3_server)
    grant = await storage.stub.CreateGrant(_renewable(_run_grant(store, "run-a", ttl_s=120)))
    plain = await storage.stub.CreateGrant(_run_grant(store, "run-c", ttl_s=120))

    async def renew(name: str, token: str) -> grpc.StatusCode:
        try:
            await storage.stub.RenewGrant(storage_pb2.RenewGrantRequest(name=name, run_token=token))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    assert await renew(grant.name, "not-the-token") == grpc.StatusCode.PERMISSION_DENIED
    assert await renew(plain.name, TOKEN) == grpc.StatusCode.PERMISSION_DENIED  # not renewable
    assert await renew(grant.name.replace("alice", "bob"), TOKEN) == grpc.StatusCode.PERMISSION_DENIED
    assert await renew(grant.name, "") == grpc.StatusCode.INVALID_ARGUMENT
    renewed = await storage.stub.RenewGrant(storage_pb2.RenewGrantRequest(name=grant.name, run_token=TOKEN))

    await storage.stub.RevokeGrant(storage_pb2.RevokeGrantRequest(name=grant.name))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await storage.stub.RenewGrant(storage_pb2.RenewGrantRequest(name=grant.name, run_token=TOKEN))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(refused.value)[0] == "GRANT_REVOKED"
    holder = _as_holder(s3_server, renewed.accesses[0])
    assert _denied(lambda: holder.get_object(store.data, "mnist/train.csv").read())


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_renewing_an_expired_grant_is_refused(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)
    grant = await storage.stub.CreateGrant(_renewable(_run_grant(store, "run-a", ttl_s=1)))
    await _sleep_until_ms(grant.expire_time.ToMilliseconds())

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await storage.stub.RenewGrant(storage_pb2.RenewGrantRequest(name=grant.name, run_token=TOKEN))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_of(refused.value)[0] == "GRANT_EXPIRED"


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_an_object_written_by_the_service_carries_the_crc_that_downloads_check(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store, tmp_path: Path
) -> None:
    """WriteObject (model code archives) stores the content's CRC32 as uploads do; a download
    checks it, and refuses the object once its bytes no longer match."""
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)
    data = os.urandom(100_000)
    where = run_pb2.ObjectLocation(connection="rgw", bucket=store.data, prefix="code/run-1/model.tar.gz")
    await storage.stub.WriteObject(storage_pb2.WriteObjectRequest(parent="accounts/alice", location=where, data=data))

    stored = store.admin.stat_object(store.data, "code/run-1/model.tar.gz")
    assert stored.metadata is not None and stored.metadata.get(CRC_METADATA) == f"{zlib.crc32(data):08x}"
    location = S3Location(
        endpoint=s3_server.url,
        region=REGION,
        bucket=store.data,
        prefix="code/run-1/model.tar.gz",
        access_key_id=s3_server.admin.access_key,
        secret_access_key=s3_server.admin.secret_key,
    )
    download_object(location, location.prefix, tmp_path / "code.tgz")
    assert (tmp_path / "code.tgz").read_bytes() == data
    # Same key, other bytes, the CRC left as it was: the download refuses them.
    tampered = bytes([data[0] ^ 1]) + data[1:]
    store.admin.put_object(
        store.data,
        "code/run-1/model.tar.gz",
        io.BytesIO(tampered),
        len(tampered),
        metadata={CRC_METADATA: f"{zlib.crc32(data):08x}"},
    )
    with pytest.raises(TransferError, match="CRC32"):
        download_object(location, location.prefix, tmp_path / "again.tgz")


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_write_grant_may_resume_an_upload_it_left_unfinished(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store, tmp_path: Path
) -> None:
    """A grant's holder may not list the bucket's unfinished uploads (that would show other runs'
    keys), but may list the parts of its own: an upload cut off midway, noted on this machine,
    resumes under the grant."""
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)
    grant = await storage.stub.CreateGrant(_run_grant(store, "run-r"))
    s3 = grant.accesses[1].s3
    location = S3Location(
        endpoint=s3_server.url,
        region=REGION,
        bucket=store.results,
        prefix="run-r",
        access_key_id=s3.access_key_id,
        secret_access_key=s3.secret_access_key,
        session_token=s3.session_token,
    )
    path = tmp_path / "big.bin"
    data = os.urandom(2 * PART_SIZE + 7)
    path.write_bytes(data)
    holder = _as_holder(s3_server, grant.accesses[1])
    headers: dict[str, str | list[str] | tuple[str]] = {CRC_METADATA: f"{zlib.crc32(data):08x}"}
    started = holder._create_multipart_upload(store.results, "run-r/big.bin", headers)
    holder._upload_part(store.results, "run-r/big.bin", data[:PART_SIZE], None, started, 1)
    # What an attempt cut off after its first part leaves: the upload, and this machine's note of it.
    assert UploadJournal(location.endpoint).note(store.results, "run-r/big.bin", started, zlib.crc32(data))

    stats = await asyncio.to_thread(upload_file, path, location, "run-r/big.bin")

    assert (stats.files, stats.resumed) == (1, 1)
    assert store.admin.get_object(store.results, "run-r/big.bin").read() == data
    assert UploadJournal(location.endpoint).noted(store.results, "run-r/big.bin") is None  # done: forgotten
    assert _denied(lambda: holder._list_multipart_uploads(store.results, prefix="run-r/"))


# --- purges ---------------------------------------------------------------------------------


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_purge_deletes_under_the_prefix_as_a_folder_on_an_s3_connection(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    await _register(storage, s3_server)
    where = run_pb2.ObjectLocation(connection="rgw", bucket=store.data, prefix="mnist")

    counted = await storage.stub.PurgeObjects(storage_pb2.PurgeObjectsRequest(parent="accounts/alice", location=where))
    still = sorted(o.object_name for o in store.admin.list_objects(store.data, recursive=True))
    purged = await storage.stub.PurgeObjects(
        storage_pb2.PurgeObjectsRequest(parent="accounts/alice", location=where, force=True)
    )
    left = sorted(o.object_name for o in store.admin.list_objects(store.data, recursive=True))
    # Another account cannot name alice's connection at all.
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await storage.stub.PurgeObjects(
            storage_pb2.PurgeObjectsRequest(
                parent="accounts/bob", location=run_pb2.ObjectLocation(connection="rgw", bucket=store.data), force=True
            )
        )

    assert (counted.purge_count, sorted(counted.purge_sample)) == (2, ["mnist/sub/test.csv", "mnist/train.csv"])
    assert len(still) == 4
    assert purged.purge_count == 2
    assert left == ["mnist-private/secret.csv", "other/x.csv"]
    assert elsewhere.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(o.object_name for o in store.admin.list_objects(store.data, recursive=True)) == left


async def test_purge_on_the_local_store_keeps_other_accounts_and_siblings(storage_factory: StorageFactory) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    for account, key in (
        ("alice", "data/a.txt"),
        ("alice", "data/sub/b.txt"),
        ("alice", "data-old/c.txt"),
        ("bob", "data/a.txt"),
    ):
        await storage.stub.WriteObject(
            storage_pb2.WriteObjectRequest(
                parent=f"accounts/{account}", location=run_pb2.ObjectLocation(bucket="mine", prefix=key), data=b"x"
            )
        )

    purged = await storage.stub.PurgeObjects(
        storage_pb2.PurgeObjectsRequest(
            parent="accounts/alice", location=run_pb2.ObjectLocation(bucket="mine", prefix="data"), force=True
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await storage.stub.PurgeObjects(
            storage_pb2.PurgeObjectsRequest(
                parent="accounts/alice", location=run_pb2.ObjectLocation(bucket="mine", prefix="../bob"), force=True
            )
        )

    async def keys(account: str) -> list[str]:
        listed = await storage.stub.ListObjects(
            storage_pb2.ListObjectsRequest(parent=f"accounts/{account}", location=run_pb2.ObjectLocation(bucket="mine"))
        )
        return [o.key for o in listed.objects]

    assert purged.purge_count == 2
    assert await keys("alice") == ["data-old/c.txt"]
    assert await keys("bob") == ["data/a.txt"]
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- inline connections with a rotated secret -------------------------------------------------


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_rotated_secret_for_the_same_store_and_key_replaces_the_kept_one(
    storage_factory: StorageFactory, s3_server: S3Server, store: Store
) -> None:
    storage = await storage_factory(encryption_key=KEY_A)
    admin = s3_server.admin
    stale = connection_request("alice", "inline-x", s3_server.url, admin.access_key, "stale-" + uuid.uuid4().hex)
    stale.connection.region = REGION
    await storage.stub.CreateConnection(stale)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await storage.stub.CreateGrant(_run_grant_on(store, "inline-x"))

    rotated = connection_request("alice", "inline-x", s3_server.url, admin.access_key, admin.secret_key)
    rotated.connection.region = REGION
    rotated.replace_secret = True
    kept = await storage.stub.CreateConnection(rotated)
    again = await storage.stub.CreateConnection(rotated)  # the same secret again: reused as is
    grant = await storage.stub.CreateGrant(_run_grant_on(store, "inline-x"))
    other_key = connection_request("alice", "inline-x", s3_server.url, "OTHERKEY", admin.secret_key)
    other_key.replace_secret = True
    with pytest.raises(grpc.aio.AioRpcError) as clash:
        await storage.stub.CreateConnection(other_key)

    assert status_of(refused.value)[0] == "STORE_REFUSED_GRANT"
    assert kept.name == again.name == "accounts/alice/connections/inline-x"
    assert _as_holder(s3_server, grant.accesses[0]).get_object(store.data, "mnist/train.csv").read() == b"1,2,3\n"
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert admin.secret_key not in storage.raw_rows("connections")


def _run_grant_on(store: Store, connection: str) -> storage_pb2.CreateGrantRequest:
    request = _run_grant(store, "run-a")
    for asked in request.accesses:
        asked.location.connection = connection
    return request
