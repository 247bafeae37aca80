"""dlaas.transfer_s3 against a real S3 server: parallel, verified, resumable transfers."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import urllib3
from hypothesis import given
from hypothesis import strategies as st
from minio import Minio
from minio import helpers as minio_helpers
from minio.datatypes import PostPolicy

from dlaas import transfer_s3
from dlaas.transfer import TransferError
from tests.s3 import REGION, S3Server

MIB = 1 << 20
Metadata = dict[str, str | list[str] | tuple[str]]


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

    with pytest.raises(TransferError, match=r"verification failed.*CRC32"):
        transfer_s3.download_prefix(location, dest)

    assert not (dest / "obj").exists() and not (dest / "obj.dlaas-part").exists()
    transfer_s3.download_prefix(location, dest)
    assert (dest / "obj").read_bytes() == data


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_gives_the_crc32_of_the_concatenation(first: bytes, second: bytes) -> None:
    assert transfer_s3.crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def test_crc32_combine_over_chunks_of_a_part_size() -> None:
    data = os.urandom(3 * MIB + 5)
    chunks = [data[i : i + MIB] for i in range(0, len(data), MIB)]
    whole = 0
    for chunk in chunks:
        whole = transfer_s3.crc32_combine(whole, zlib.crc32(chunk), len(chunk))

    assert whole == zlib.crc32(data)


def _signed(admin: Minio, location: transfer_s3.S3Location) -> transfer_s3.S3Location:
    """The location as a presigned grant gives it: one signed GET per object, no keys."""
    objects = tuple(
        transfer_s3.PresignedGet(
            o.object_name or "",
            o.size or 0,
            (o.etag or "").strip('"'),
            admin.presigned_get_object(location.bucket, o.object_name or ""),
        )
        for o in admin.list_objects(location.bucket, prefix=location.prefix + "/", recursive=True)
    )
    return transfer_s3.S3Location(
        location.endpoint, REGION, location.bucket, location.prefix, presigned=True, objects=objects
    )


@pytest.mark.parametrize("access", ["keys", "presigned"])
def test_our_uploads_carry_a_crc32_and_a_download_checks_it_not_the_etag(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], access: str
) -> None:
    admin, location = bucket
    sizes = {"small": 3 * MIB + 1, "big": 2 * transfer_s3.PART_SIZE + 9}
    src = tmp_path / "src"
    src.mkdir()
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    transfer_s3.upload_tree(src, location)
    for name in sizes:
        assert _stored_crc(admin, location.bucket, f"set/{name}") == f"{zlib.crc32((src / name).read_bytes()):08x}"
    reading = location if access == "keys" else _signed(admin, location)
    transfer_s3.download_prefix(reading, tmp_path / "good")
    for name in sizes:
        assert (tmp_path / "good" / name).read_bytes() == (src / name).read_bytes()

    # Each object replaced by other bytes of the same size, by a client that kept the old CRC32:
    # its ETag is that of the new bytes (an MD5 check would pass), its CRC32 is not.
    for name, size in sizes.items():
        stale: Metadata = {transfer_s3.CRC_METADATA: f"{zlib.crc32((src / name).read_bytes()):08x}"}
        other = os.urandom(size)
        admin.put_object(
            location.bucket, f"set/{name}", io.BytesIO(other), size, part_size=transfer_s3.PART_SIZE, metadata=stale
        )
        (tmp_path / f"{name}.other").write_bytes(other)
        etag = (admin.stat_object(location.bucket, f"set/{name}").etag or "").strip('"')
        assert etag == transfer_s3.object_etag(tmp_path / f"{name}.other")
        reading = location if access == "keys" else _signed(admin, location)
        one = transfer_s3.S3Location(
            reading.endpoint,
            REGION,
            reading.bucket,
            f"set/{name}",
            reading.access_key_id,
            reading.secret_access_key,
            presigned=reading.presigned,
            objects=tuple(o for o in reading.objects if o.key == f"set/{name}"),
        )

        with pytest.raises(TransferError, match=rf"verification failed for .*set/{name}.*CRC32"):
            transfer_s3.download_prefix(one, tmp_path / "bad")

        assert not (tmp_path / "bad" / name).exists()
        assert not list((tmp_path / "bad").glob("*.dlaas-part*"))


def test_an_object_without_our_crc32_is_still_checked_by_its_etag(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    small, big = os.urandom(MIB + 3), os.urandom(transfer_s3.PART_SIZE + 7)
    admin.put_object(location.bucket, "set/small", io.BytesIO(small), len(small))
    admin.put_object(location.bucket, "set/big", io.BytesIO(big), len(big), part_size=transfer_s3.PART_SIZE)
    assert _stored_crc(admin, location.bucket, "set/big") is None

    transfer_s3.download_prefix(location, tmp_path / "dst")

    assert (tmp_path / "dst" / "small").read_bytes() == small
    assert (tmp_path / "dst" / "big").read_bytes() == big
    # A chunk that an earlier attempt recorded but got wrong: caught by the ETag's MD5.
    dest = tmp_path / "again"
    dest.mkdir()
    etag = (admin.stat_object(location.bucket, "set/big").etag or "").strip('"')
    (dest / "big.dlaas-part").write_bytes(b"\1" * transfer_s3.PART_SIZE + big[transfer_s3.PART_SIZE :])
    (dest / "big.dlaas-part.done").write_text(f"{etag} {len(big)}\n0\n")
    only_big = transfer_s3.S3Location(location.endpoint, REGION, location.bucket, "set/big", *_keys(location))

    with pytest.raises(TransferError, match=r"verification failed.*ETag"):
        transfer_s3.download_prefix(only_big, dest)

    assert not (dest / "big").exists() and not (dest / "big.dlaas-part").exists()


def test_a_resumed_download_checks_the_chunks_read_back_from_disk_by_crc32(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    data = os.urandom(3 * transfer_s3.PART_SIZE + 11)
    transfer_s3.upload_tree(_one(tmp_path, "obj", data), location)
    etag = (admin.stat_object(location.bucket, "set/obj").etag or "").strip('"')
    chunk = transfer_s3.PART_SIZE

    def attempt(name: str, content: bytes, recorded: list[int]) -> tuple[Path, list[int]]:
        dest = tmp_path / name
        dest.mkdir()
        (dest / "obj.dlaas-part").write_bytes(content)
        (dest / "obj.dlaas-part.done").write_text(f"{etag} {len(data)}\n" + "".join(f"{i}\n" for i in recorded))
        moved: list[int] = []
        transfer_s3.download_prefix(location, dest, on_bytes=moved.append)
        return dest, moved

    # Chunks 0 and 2 from an earlier attempt, right: only 1 and 3 are fetched.
    dest, moved = attempt("some", data[:chunk] + bytes(chunk) + data[2 * chunk : 3 * chunk] + bytes(11), [0, 2])
    assert (dest / "obj").read_bytes() == data
    assert sum(moved) == chunk + 11
    # Every chunk from an earlier attempt: nothing fetched, the object's CRC32 asked for.
    dest, moved = attempt("all", data, [0, 1, 2, 3])
    assert (dest / "obj").read_bytes() == data
    assert sum(moved) == 0
    # A chunk read back from disk that is wrong, whether or not others were fetched.
    for name, recorded in (("bad-some", [2]), ("bad-all", [0, 1, 2, 3])):
        wrong = bytearray(data)
        wrong[2 * chunk + 5] ^= 0xFF
        with pytest.raises(TransferError, match=r"verification failed.*CRC32"):
            attempt(name, bytes(wrong), recorded)
        assert not list((tmp_path / name).iterdir())


def test_an_upload_replaces_an_object_whose_crc32_is_stale_even_with_the_same_etag(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    admin, location = bucket
    data = os.urandom(transfer_s3.PART_SIZE + 3)
    src = _one(tmp_path, "obj", data)
    # As an upload leaves it when the file changed while it was read: content and ETag of one
    # version, the CRC32 of another.
    stale: Metadata = {transfer_s3.CRC_METADATA: f"{zlib.crc32(data) ^ 1:08x}"}
    admin.put_object(
        location.bucket, "set/obj", io.BytesIO(data), len(data), part_size=transfer_s3.PART_SIZE, metadata=stale
    )

    again = transfer_s3.upload_tree(src, location)

    assert (again.files, again.skipped) == (1, 0)
    assert _stored_crc(admin, location.bucket, "set/obj") == f"{zlib.crc32(data):08x}"
    assert transfer_s3.upload_tree(src, location).skipped == 1


def _post_location(admin: Minio, location: transfer_s3.S3Location, *, crc_field: bool) -> transfer_s3.S3Location:
    """A WRITE grant on a store without STS: a POST policy for keys under the prefix (with the
    CRC32 field allowed, as the storage service issues it now, or without, as it did before)."""
    policy = PostPolicy(location.bucket, datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    policy.add_starts_with_condition("key", location.prefix + "/")
    if crc_field:
        policy.add_starts_with_condition(transfer_s3.CRC_METADATA, "")
    fields = admin.presigned_post_policy(policy)
    return transfer_s3.S3Location(
        location.endpoint,
        REGION,
        location.bucket,
        location.prefix,
        presigned=True,
        post_url=f"{location.endpoint}/{location.bucket}",
        post_fields=tuple(sorted(fields.items())),
    )


@pytest.mark.parametrize("crc_field", [True, False])
def test_uploads_through_a_post_policy_carry_the_crc32_when_the_policy_allows_it(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], crc_field: bool
) -> None:
    admin, location = bucket
    data = os.urandom(MIB + 1)

    transfer_s3.upload_tree(_one(tmp_path, "obj", data), _post_location(admin, location, crc_field=crc_field))

    assert _stored_crc(admin, location.bucket, "set/obj") == (f"{zlib.crc32(data):08x}" if crc_field else None)
    transfer_s3.download_prefix(_signed(admin, location), tmp_path / "dst")
    assert (tmp_path / "dst" / "obj").read_bytes() == data


def test_a_post_policy_refuses_a_field_it_does_not_name(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    # Why the uploader reads the policy before sending the CRC32 field: the store refuses it otherwise.
    admin, location = bucket
    old = _post_location(admin, location, crc_field=False)
    fields: dict[str, Any] = {**dict(old.post_fields), "key": "set/x", transfer_s3.CRC_METADATA: "00000000"}
    fields["file"] = ("x", b"x")

    response = urllib3.PoolManager().request("POST", old.post_url, fields=fields)

    assert response.status == 403


def _stored_crc(admin: Minio, bucket: str, key: str) -> str | None:
    metadata = admin.stat_object(bucket, key).metadata or {}
    value = metadata.get(transfer_s3.CRC_METADATA)
    return str(value) if value is not None else None


def _keys(location: transfer_s3.S3Location) -> tuple[str, str]:
    return location.access_key_id, location.secret_access_key


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


@pytest.mark.parametrize("size", [3 * MIB, 2 * transfer_s3.PART_SIZE + 7], ids=["one part", "multipart"])
def test_an_upload_whose_bytes_differ_from_what_was_hashed_is_refused_by_the_store(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Uploads are verified by the store itself: each request carries the hash of its body, which
    RGW checks (here the hash is made wrong, as bytes changed in flight would make it)."""
    admin, location = bucket
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(os.urandom(size))
    real = minio_helpers.sha256_hash
    monkeypatch.setattr("minio.api.sha256_hash", lambda data: real(data) if not data else real(bytes(data) + b"!"))

    with pytest.raises(TransferError, match=r"upload .*XAmzContentSHA256Mismatch"):
        transfer_s3.upload_tree(tmp_path / "src", location, "in")
    assert [o.object_name for o in admin.list_objects(location.bucket, prefix="set/", recursive=True)] == []


def _parts_sent(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[int]:
    """The part numbers the uploads send from now on (observed on minio's own call); with
    `fail_at`, sending that part fails as a cut connection would."""
    sent: list[int] = []
    original = Minio._upload_part

    def observed(self: Minio, bucket: str, key: str, data: bytes, headers: Any, upload_id: str, number: int) -> str:
        if number == fail_at:
            raise urllib3.exceptions.ProtocolError("connection reset by peer")
        sent.append(number)
        return original(self, bucket, key, data, headers, upload_id, number)

    monkeypatch.setattr(Minio, "_upload_part", observed)
    return sent


def test_an_upload_cut_off_midway_resumes_with_the_parts_it_had_not_sent(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, location = bucket
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(4 * transfer_s3.PART_SIZE + 100)  # five parts
    (src / "big.bin").write_bytes(data)
    sent = _parts_sent(monkeypatch, fail_at=4)

    with pytest.raises(TransferError):
        transfer_s3.upload_tree(src, location, workers=1)
    left = admin._list_multipart_uploads(location.bucket, prefix="set/big.bin").uploads
    first = list(sent)
    assert len(left) == 1 and first[:3] == [1, 2, 3] and 4 not in first  # the parts sent stay on the store

    monkeypatch.undo()
    sent = _parts_sent(monkeypatch)
    moved: list[int] = []
    stats = transfer_s3.upload_tree(src, location, workers=2, on_bytes=moved.append)

    assert sorted(sent) == [n for n in range(1, 6) if n not in first]
    assert (stats.files, stats.resumed, stats.bytes) == (1, 1, len(data))
    assert sum(moved) == len(data)  # the parts kept count too, once
    assert not admin._list_multipart_uploads(location.bucket, prefix="set/big.bin").uploads
    transfer_s3.download_object(location, "set/big.bin", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data  # and its CRC32, checked by the download, is right


def _begun(admin: Minio, location: transfer_s3.S3Location, key: str, content: bytes, parts: dict[int, bytes]) -> str:
    """An upload begun by an earlier attempt of this machine for `content`, with `parts` sent."""
    headers: Metadata = {transfer_s3.CRC_METADATA: f"{zlib.crc32(content):08x}"}
    upload_id = admin._create_multipart_upload(location.bucket, key, headers)
    for number, part in parts.items():
        admin._upload_part(location.bucket, key, part, None, upload_id, number)
    assert transfer_s3.UploadJournal(location.endpoint).note(location.bucket, key, upload_id, zlib.crc32(content))
    return upload_id


def test_a_resumed_upload_keeps_only_the_parts_whose_bytes_are_this_files(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are compared with the file, part by part (listed two at a time here: the listing's
    pages are followed): one whose bytes differ is sent again."""
    admin, location = bucket
    size = transfer_s3.PART_SIZE
    data = os.urandom(5 * size + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    parts = {1: data[:size], 2: os.urandom(size), 3: data[2 * size : 3 * size], 4: data[3 * size : 4 * size]}
    _begun(admin, location, "set/big.bin", data, parts)
    original = Minio._list_parts
    monkeypatch.setattr(
        Minio, "_list_parts", lambda self, *args, **kwargs: original(self, *args, **{**kwargs, "max_parts": 2})
    )
    sent = _parts_sent(monkeypatch)

    stats = transfer_s3.upload_file(path, location, "set/big.bin")

    assert sorted(sent) == [2, 5, 6] and stats.resumed == 1  # six parts, the last of 3 bytes
    transfer_s3.download_object(location, "set/big.bin", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_an_upload_noted_for_other_content_is_aborted_and_begun_again(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file changed between the attempts: the old upload, whose CRC32 metadata would be stale,
    is aborted, and every part sent anew."""
    admin, location = bucket
    size = transfer_s3.PART_SIZE
    old = os.urandom(3 * size)
    new = old[:size] + os.urandom(2 * size)  # part 1 the same
    path = tmp_path / "big.bin"
    path.write_bytes(new)
    _begun(admin, location, "set/big.bin", old, {1: old[:size], 2: old[size : 2 * size]})
    sent = _parts_sent(monkeypatch)

    stats = transfer_s3.upload_file(path, location, "set/big.bin", workers=2)

    assert sorted(sent) == [1, 2, 3] and (stats.files, stats.resumed) == (1, 0)
    assert not admin._list_multipart_uploads(location.bucket, prefix="set/big.bin").uploads
    stored = admin.stat_object(location.bucket, "set/big.bin")
    assert stored.metadata is not None
    assert stored.metadata.get(transfer_s3.CRC_METADATA) == f"{zlib.crc32(new):08x}"


def test_an_unfinished_upload_this_machine_did_not_begin_is_left_alone(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location]
) -> None:
    """Another client's upload of the same key, in progress: neither resumed nor aborted."""
    admin, location = bucket
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(2 * transfer_s3.PART_SIZE + 1))
    theirs = admin._create_multipart_upload(location.bucket, "set/big.bin", {"Content-Type": "text/plain"})

    stats = transfer_s3.upload_file(path, location, "set/big.bin")

    assert (stats.files, stats.resumed) == (1, 0)
    listed = admin._list_multipart_uploads(location.bucket, prefix="set/big.bin").uploads
    assert [u.upload_id for u in listed] == [theirs]
    assert admin.stat_object(location.bucket, "set/big.bin").size == path.stat().st_size


def test_an_upload_that_cannot_be_noted_is_aborted_when_it_fails(
    tmp_path: Path, bucket: tuple[Minio, transfer_s3.S3Location], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No note, nothing to resume: the parts are not left lying on the store."""
    admin, location = bucket
    (tmp_path / "not-a-directory").write_text("")
    monkeypatch.setenv("DLAAS_TRANSFER_STATE_DIR", str(tmp_path / "not-a-directory"))
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(3 * transfer_s3.PART_SIZE))
    _parts_sent(monkeypatch, fail_at=3)

    with pytest.raises(TransferError):
        transfer_s3.upload_file(path, location, "set/big.bin", workers=1)

    assert not admin._list_multipart_uploads(location.bucket, prefix="set/big.bin").uploads
