"""dlaas.transfer_s3 against a real S3 server: parallel, verified, resumable transfers."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import pytest
from minio import Minio

from dlaas import transfer_s3
from dlaas.transfer import TransferError
from tests.s3 import REGION, S3Server

MIB = 1 << 20


@pytest.fixture
def bucket(s3_server: S3Server) -> tuple[Minio, transfer_s3.S3Location]:
    admin = Minio(
        s3_server.endpoint, s3_server.admin.access_key, s3_server.admin.secret_key, secure=False, region=REGION
    )
    name = f"t-{uuid.uuid4().hex[:10]}"
    admin.make_bucket(name)
    location = transfer_s3.S3Location(
        s3_server.url, REGION, name, "set", s3_server.admin.access_key, s3_server.admin.secret_key
    )
    return admin, location


def test_etag_of_a_multipart_upload_is_computed_as_s3_does(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(transfer_s3.PART_SIZE * 2 + 5)
    path.write_bytes(data)
    parts = [data[i : i + transfer_s3.PART_SIZE] for i in range(0, len(data), transfer_s3.PART_SIZE)]
    combined = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()  # noqa: S324

    assert transfer_s3.object_etag(path) == f"{combined}-3"
    (tmp_path / "small").write_bytes(b"abc")
    assert transfer_s3.object_etag(tmp_path / "small") == hashlib.md5(b"abc").hexdigest()  # noqa: S324


def test_upload_then_download_round_trips_verified_and_skips_what_is_there(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    sizes = {"empty": 0, "a/one": 1, "a/b/mid": 3 * MIB, "big": 2 * transfer_s3.PART_SIZE + 123}
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    moved: list[int] = []

    up = transfer_s3.upload_tree(src, location, "in", on_bytes=moved.append)
    again = transfer_s3.upload_tree(src, location, "in")
    down = transfer_s3.download_prefix(location, tmp_path / "dst", on_bytes=moved.append)
    down_again = transfer_s3.download_prefix(location, tmp_path / "dst")

    assert (up.files, up.skipped, again.files, again.skipped) == (4, 0, 0, 4)
    assert (down.files, down_again.skipped) == (4, 4)
    for name in sizes:
        assert (tmp_path / "dst" / "in" / name).read_bytes() == (src / name).read_bytes()
    assert sum(moved) == 2 * sum(sizes.values())
    assert (admin.stat_object(location.bucket, "set/in/big").etag or "").strip('"').endswith("-3")
    assert not list((tmp_path / "dst").rglob("*.dlaas-part*"))


def test_an_object_written_by_another_client_with_other_part_sizes_verifies(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    data = os.urandom(12 * MIB)
    admin.put_object(location.bucket, "set/theirs.bin", io.BytesIO(data), len(data), part_size=5 * MIB)

    transfer_s3.download_prefix(location, tmp_path / "dst")

    assert (tmp_path / "dst" / "theirs.bin").read_bytes() == data


def test_a_partial_download_resumes_with_the_missing_chunks_only(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    data = os.urandom(2 * transfer_s3.PART_SIZE + 7)
    transfer_s3.upload_tree(_one(tmp_path, "obj", data), location)
    etag = (admin.stat_object(location.bucket, "set/obj").etag or "").strip('"')
    dest = tmp_path / "dst"
    dest.mkdir()
    # An earlier attempt wrote the first chunk and recorded it.
    part = dest / "obj.dlaas-part"
    part.write_bytes(data[: transfer_s3.PART_SIZE] + b"\0" * (len(data) - transfer_s3.PART_SIZE))
    (dest / "obj.dlaas-part.done").write_text(f"{etag} {len(data)}\n0\n")
    moved: list[int] = []

    transfer_s3.download_prefix(location, dest, on_bytes=moved.append)

    assert (dest / "obj").read_bytes() == data
    assert sum(moved) == len(data) - transfer_s3.PART_SIZE


def test_a_corrupt_partial_download_fails_verification_and_is_discarded(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    data = os.urandom(transfer_s3.PART_SIZE + 7)
    transfer_s3.upload_tree(_one(tmp_path, "obj", data), location)
    etag = (admin.stat_object(location.bucket, "set/obj").etag or "").strip('"')
    dest = tmp_path / "dst"
    dest.mkdir()
    (dest / "obj.dlaas-part").write_bytes(b"\1" * len(data))  # recorded as fetched, but wrong
    (dest / "obj.dlaas-part.done").write_text(f"{etag} {len(data)}\n0\n")

    with pytest.raises(TransferError, match="verification failed"):
        transfer_s3.download_prefix(location, dest)

    assert not (dest / "obj").exists() and not (dest / "obj.dlaas-part").exists()
    transfer_s3.download_prefix(location, dest)
    assert (dest / "obj").read_bytes() == data


def test_wrong_credentials_fail_with_the_store_code(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    _, location = bucket
    wrong = transfer_s3.S3Location(location.endpoint, REGION, location.bucket, "set", location.access_key_id, "nope")

    with pytest.raises(TransferError) as caught:
        transfer_s3.download_prefix(wrong, tmp_path / "dst")

    assert "SignatureDoesNotMatch" in str(caught.value) or "AccessDenied" in str(caught.value)
    assert "nope" not in str(caught.value)


def _one(tmp_path: Path, name: str, data: bytes) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / name).write_bytes(data)
    return src
