"""Transfers to and from an S3-compatible store with the scoped credentials of a grant.

Used by the runner (staging data, uploading results) and the CLI. Both directions are
parallel: downloads fetch every object, and every part of a large object, as ranged GETs on a
pool of workers, written in place with pwrite; uploads send files in parallel and a large file
as a parallel multipart upload.

Integrity: an object's ETag is the MD5 of its bytes, or for a multipart upload the MD5 of its
parts' MD5s followed by "-<parts>". Uploads are checked by the store request by request (minio
sends each body's SHA-256, or over HTTPS its Content-MD5, and the store refuses a mismatch);
files whose ETag the store already holds (fixed part size) are skipped. Uploads also store the
CRC32 of the whole content as object metadata (`x-amz-meta-dlaas-crc32`, 8 hex digits), and
downloads check an object that carries it by that CRC32, read from the GET's own headers (no
HEAD; presigned GETs carry it too): zlib's CRC32 costs about a tenth of an MD5 here. A CRC32
detects corruption, not tampering: who may write an object is the grant's business. An object
without it (written by another client) is checked by its ETag, recomputed from the bytes
written; one whose ETag was made with other part sizes is checked with the part sizes that give
its part count, else against an `x-amz-meta-sha256` its uploader attached, when present.

Resume: a download writes `<name>.dlaas-part` beside its destination and records finished
chunks in `<name>.dlaas-part.done`; a later attempt (the same run's next attempt, or a rerun of
`dlaas download`) fetches only the chunks missing, and re-reads the others from disk to check
the whole.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dlaas.transfer import Placed, TransferError, TransferStats, safe_relpath, serialized, sha256_file

__all__ = [
    "CRC_METADATA",
    "PART_SIZE",
    "S3Location",
    "crc32_combine",
    "download_prefix",
    "object_etag",
    "upload_file",
    "upload_tree",
]

PART_SIZE = 16 << 20
DEFAULT_WORKERS = 8
_READ = 1 << 20
_PART_SUFFIX = ".dlaas-part"
# The CRC32 (zlib's) of an object's whole content, 8 hex digits, stored by our uploads. The
# storage service's POST policy allows this field (services/storage/adapters/s3_store.py).
CRC_METADATA = "x-amz-meta-dlaas-crc32"
_CRC_VALUE = re.compile(r"[0-9a-fA-F]{8}")


@dataclass(frozen=True)
class PresignedGet:
    key: str
    size: int
    etag: str
    url: str = field(repr=False)


@dataclass(frozen=True)
class S3Location:
    """A bucket and key prefix on a store, and what reaches it: (temporary) credentials, or
    presigned URLs (``presigned``: a signed GET per object for reading, a POST policy for writing).
    """

    endpoint: str
    region: str
    bucket: str
    prefix: str
    access_key_id: str = ""
    secret_access_key: str = field(repr=False, default="")
    session_token: str = field(repr=False, default="")
    expire_ms: int = 0
    presigned: bool = False
    objects: tuple[PresignedGet, ...] = ()
    post_url: str = field(repr=False, default="")
    post_fields: tuple[tuple[str, str], ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "endpoint": self.endpoint,
            "region": self.region,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "expire_ms": self.expire_ms,
        }
        if self.presigned:
            described["presigned"] = {
                "objects": [[o.key, o.size, o.etag, o.url] for o in self.objects],
                "post_url": self.post_url,
                "post_fields": dict(self.post_fields),
            }
        else:
            described |= {
                "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key,
                "session_token": self.session_token,
            }
        return described

    def key(self, relative: str) -> str:
        """The key of `relative` under this location's prefix."""
        parts = [part for part in (self.prefix.strip("/"), relative.strip("/")) if part]
        return "/".join(parts)


# What a long transfer calls for the location's current credentials (renewed while it runs).
Fresh = Callable[[], S3Location]


def client(location: S3Location, workers: int = DEFAULT_WORKERS, fresh: Fresh | None = None) -> Any:
    import urllib3
    from minio import Minio
    from minio.credentials.credentials import Credentials
    from minio.credentials.providers import Provider

    split = urlsplit(location.endpoint)
    http = urllib3.PoolManager(
        maxsize=max(10, workers * 2),
        timeout=urllib3.Timeout(connect=10, read=300),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    if fresh is None:
        return Minio(
            split.netloc,
            access_key=location.access_key_id,
            secret_key=location.secret_access_key,
            session_token=location.session_token or None,
            secure=split.scheme == "https",
            region=location.region or "us-east-1",
            http_client=http,
        )

    current = fresh

    class _Current(Provider):
        # minio asks its provider before every request: renewed credentials apply mid-transfer.
        def retrieve(self) -> Credentials:
            now = current()
            return Credentials(now.access_key_id, now.secret_access_key, now.session_token or None)

    return Minio(
        split.netloc,
        credentials=_Current(),
        secure=split.scheme == "https",
        region=location.region or "us-east-1",
        http_client=http,
    )


class _EtagDigest:
    """The ETag S3 gives an object uploaded in `part_size` parts, computed as bytes go by.

    One MD5 pass: a single-part object's ETag is the MD5 of its one part. With `crc`, also the
    CRC32 of the whole (`crc`), as our uploads store it.
    """

    def __init__(self, part_size: int = PART_SIZE, *, crc: bool = False):
        self._part_size = part_size
        self._part = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._parts: list[bytes] = []
        self._with_crc = crc
        self.size = 0
        self.crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._with_crc:
            self.crc = zlib.crc32(data, self.crc)
        view = memoryview(data)
        while view:
            take = min(len(view), self._part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self._part_size:
                self._parts.append(self._part.digest())
                self._part = hashlib.md5(usedforsecurity=False)
                self._in_part = 0

    def etag(self) -> str:
        parts = self._parts + ([self._part.digest()] if self._in_part or not self._parts else [])
        if len(parts) == 1:
            return parts[0].hex()
        combined = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
        return f"{combined}-{len(parts)}"


def _part_sizes_for(size: int, parts: int) -> list[int]:
    """Part sizes clients commonly use (whole MiB) that cut `size` bytes into `parts` parts."""
    if parts < 1:
        return []
    mib = 1 << 20
    common = [5 * mib, 8 * mib, 10 * mib, 15 * mib, 16 * mib, 32 * mib, 64 * mib, 100 * mib, 128 * mib]
    common.append(-(-size // parts // mib) * mib)
    return sorted({p for p in common if p > 0 and -(-size // p) == parts})


def _digest_file(path: Path, part_size: int = PART_SIZE, *, crc: bool = False) -> _EtagDigest:
    digest = _EtagDigest(part_size, crc=crc)
    buffer = bytearray(_READ)
    view = memoryview(buffer)
    with open(path, "rb") as stream:
        while count := stream.readinto(view):
            digest.update(view[:count])
    return digest


def _crc_of(stream: Any, length: int) -> int:
    """The CRC32 of (up to) the next `length` bytes of `stream`."""
    crc, seen = 0, 0
    buffer = bytearray(_READ)
    view = memoryview(buffer)
    while seen < length and (count := stream.readinto(view[: min(_READ, length - seen)])):
        crc = zlib.crc32(view[:count], crc)
        seen += count
    return crc


def _file_crc(path: Path, size: int, parallel: int) -> int:
    """The CRC32 of a file, its PART_SIZE chunks read side by side (zlib releases the GIL while it
    sums) and joined: the pass a multipart upload waits for before it starts."""

    def chunk(offset: int) -> int:
        with open(path, "rb") as stream:
            stream.seek(offset)
            return _crc_of(stream, min(PART_SIZE, size - offset))

    offsets = range(0, size, PART_SIZE)
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(offsets)))) as pool:
        crcs = list(pool.map(chunk, offsets))
    crc = 0
    for offset, part in zip(offsets, crcs, strict=True):
        crc = crc32_combine(crc, part, min(PART_SIZE, size - offset))
    return crc


def object_etag(path: Path) -> str:
    """The ETag an upload of `path` by this module gets."""
    return _digest_file(path).etag()


# CRC-32 arithmetic (zlib's polynomial, reflected bit order) to join the CRCs of chunks fetched
# apart: zlib offers crc32_combine in C but Python's zlib module does not expose it.
_CRC_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC-32 polynomial."""
    product = 0
    mask = 1 << 31
    while mask:
        if a & mask:
            product ^= b
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
        mask >>= 1
    return product


def _powers_of_x() -> list[int]:
    powers = [1 << 30]  # x^(2^0)
    for _ in range(31):
        powers.append(_multmodp(powers[-1], powers[-1]))
    return powers


_X_2N = _powers_of_x()  # x^(2^n) modulo the polynomial; periodic in n with period 32


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32 of A + B from crc32(A), crc32(B) and len(B), as zlib's crc32_combine."""
    shift = 1 << 31  # x^0
    n, k = length2, 3  # x^(8 * length2): the bits of length2, from x^(2^3) up
    while n:
        if n & 1:
            shift = _multmodp(_X_2N[k & 31], shift)
        n >>= 1
        k += 1
    return _multmodp(shift, crc1) ^ crc2


def _crc_text(crc: int) -> str:
    return f"{crc:08x}"


def _s3_failure(action: str, target: str, exc: Exception) -> TransferError:
    code = getattr(exc, "code", None) or exc.__class__.__name__
    return TransferError(f"cannot {action} {target}: {code}")


def _run_all(pool: ThreadPoolExecutor, futures: list[Future[Any]]) -> list[Any]:
    """Results in order; the first failure cancels what has not started and is raised."""
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    failed = next((f for f in futures if f in done and f.exception() is not None), None)
    if failed is not None:
        for future in futures:
            future.cancel()
        failed.result()
    return [future.result() for future in futures]


# --- downloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    key: str
    size: int
    etag: str
    dest: Path


def _listing(s3: Any, location: S3Location, dest: Path) -> Iterator[_Remote]:
    prefix = location.prefix
    for item in s3.list_objects(location.bucket, prefix=prefix or None, recursive=True):
        key = item.object_name or ""
        if key.endswith("/"):
            continue  # a folder marker
        if key == prefix:
            relative = key.rsplit("/", 1)[-1]
        else:
            base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
            if not key.startswith(base):
                continue  # "data/tr" also lists "data/train…": not under this prefix as a folder
            relative = key[len(base) :]
        yield _Remote(key, item.size or 0, (item.etag or "").strip('"'), dest / safe_relpath(relative))


class _Source:
    """Ranged reads of a bucket's objects with a grant's credentials."""

    def __init__(self, s3: Any, bucket: str):
        self.s3 = s3
        self.bucket = bucket

    def get(self, key: str, offset: int, length: int) -> Any:
        return self.s3.get_object(self.bucket, key, offset=offset, length=length)

    def sha256(self, key: str) -> str | None:
        meta = self.s3.stat_object(self.bucket, key).metadata
        sha = meta.get("x-amz-meta-sha256") or meta.get("X-Amz-Meta-Sha256")
        return str(sha) if sha else None


class _SignedSource:
    """Ranged reads through presigned GET URLs (no HEAD: its signature is for GET only)."""

    def __init__(self, location: S3Location, workers: int):
        import urllib3

        self.bucket = location.bucket
        self._urls = {o.key: o.url for o in location.objects}
        self._http = urllib3.PoolManager(maxsize=max(10, workers * 2), timeout=urllib3.Timeout(connect=10, read=300))

    def get(self, key: str, offset: int, length: int) -> Any:
        response = self._http.request(
            "GET",
            self._urls[key],
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
            preload_content=False,
            retries=3,
        )
        if response.status not in (200, 206):
            code = _error_code(response.read())
            response.release_conn()
            raise TransferError(f"cannot download {self.bucket}/{key}: {response.status} {code}")
        return response

    def sha256(self, key: str) -> str | None:
        return None


def _error_code(body: bytes) -> str:
    text = body[:2000].decode(errors="replace")
    start, end = text.find("<Code>"), text.find("</Code>")
    return text[start + 6 : end] if 0 <= start < end else "error"


def download_prefix(
    location: S3Location,
    dest: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    on_bytes: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    fresh: Fresh | None = None,
) -> TransferStats:
    """Every object under the location's prefix into `dest` (a single object lands under its own name).

    `on_total` gets the bytes to move once they are listed (files already there included).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if location.presigned:
        remotes = [
            _Remote(o.key, o.size, o.etag, dest / safe_relpath(_relative(location.prefix, o.key)))
            for o in location.objects
        ]
        if on_total is not None:
            on_total(sum(remote.size for remote in remotes))
        return _download(_SignedSource(location, workers), remotes, workers, serialized(on_bytes))
    s3 = client(location, workers, fresh)
    try:
        remotes = list(_listing(s3, location, dest))
    except Exception as exc:
        raise _s3_failure("list", f"{location.bucket}/{location.prefix}", exc) from exc
    if on_total is not None:
        on_total(sum(remote.size for remote in remotes))
    return _download(_Source(s3, location.bucket), remotes, workers, serialized(on_bytes))


def _relative(prefix: str, key: str) -> str:
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    return key[len(base) :]


def download_object(
    location: S3Location,
    key: str,
    dest: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    on_bytes: Callable[[int], None] | None = None,
    fresh: Fresh | None = None,
) -> TransferStats:
    """One object, by key, to the file `dest`."""
    if location.presigned:
        signed = next((o for o in location.objects if o.key == key), None)
        if signed is None:
            raise TransferError(f"cannot read {location.bucket}/{key}: not in the grant")
        remote = _Remote(key, signed.size, signed.etag, dest)
        return _download(_SignedSource(location, workers), [remote], workers, serialized(on_bytes))
    s3 = client(location, workers, fresh)
    try:
        stat = s3.stat_object(location.bucket, key)
    except Exception as exc:
        raise _s3_failure("read", f"{location.bucket}/{key}", exc) from exc
    remote = _Remote(key, stat.size or 0, (stat.etag or "").strip('"'), dest)
    return _download(_Source(s3, location.bucket), [remote], workers, serialized(on_bytes))


def _download(
    source: _Source | _SignedSource, remotes: list[_Remote], workers: int, progress: Callable[[int], None]
) -> TransferStats:
    stats = TransferStats()
    pending: list[_Remote] = []
    for remote in remotes:
        if remote.dest.is_file() and remote.dest.stat().st_size == remote.size and _matches(source, remote):
            stats.add("skipped", remote.size)
        else:
            pending.append(remote)
    small = [remote for remote in pending if remote.size <= PART_SIZE]
    large = [remote for remote in pending if remote.size > PART_SIZE]
    # Folders made once here, not once per file in the workers.
    for folder in sorted({remote.dest.parent for remote in pending}):
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="s3-get") as pool:
        tasks: list[Future[None]] = [pool.submit(_fetch_whole, source, remote, progress) for remote in small]
        # Each chunk is one PART_SIZE part: its CRC32 (or MD5), taken as it streams, spares
        # re-reading the file.
        streamed = {remote.dest: _Streamed() for remote in large}
        for remote in large:
            fetchers = _chunk_fetchers(source, remote, progress, streamed[remote.dest])
            tasks.extend(pool.submit(fetch) for fetch in fetchers)
        _run_all(pool, tasks)
        finals = [pool.submit(_finish_download, source, remote, streamed[remote.dest]) for remote in large]
        _run_all(pool, finals)
    for remote in pending:
        stats.add("copied", remote.size)
    return stats


def _claimed_crc(response: Any) -> int | None:
    """The CRC32 our uploader stored with an object, from a GET response's headers; None for an
    object without it (written by another client)."""
    value = response.headers.get(CRC_METADATA)
    return int(value, 16) if value and _CRC_VALUE.fullmatch(value) else None


def _crc_failure(bucket: str, key: str) -> TransferError:
    return TransferError(f"verification failed for {bucket}/{key}: content does not match its CRC32 ({CRC_METADATA})")


def _fetch_whole(source: _Source | _SignedSource, remote: _Remote, progress: Callable[[int], None]) -> None:
    """A single-part object: one GET, checked in memory, written under a temporary name, renamed.

    Checked by the CRC32 our uploader stored with it when the GET's headers carry one, else by
    its ETag: at most PART_SIZE bytes, so the plain MD5 when it was uploaded in one part.
    """
    claimed: int | None = None
    crc = 0
    digest = hashlib.md5(usedforsecurity=False)
    chunks: list[bytes] = []
    try:
        if remote.size:
            response = source.get(remote.key, 0, remote.size)
            try:
                claimed = _claimed_crc(response)
                for data in response.stream(_READ):
                    if claimed is None:
                        digest.update(data)
                    else:
                        crc = zlib.crc32(data, crc)
                    chunks.append(data)
                    progress(len(data))
            finally:
                response.close()
                response.release_conn()
    except TransferError:
        raise
    except Exception as exc:
        raise _s3_failure("download", f"{source.bucket}/{remote.key}", exc) from exc
    if claimed is not None:
        if crc != claimed or sum(map(len, chunks)) != remote.size:
            raise _crc_failure(source.bucket, remote.key)
        verified = True
    else:
        single = digest.hexdigest()
        as_one_part = hashlib.md5(bytes.fromhex(single), usedforsecurity=False).hexdigest() + "-1"
        verified = remote.etag in (single, as_one_part)
    temp = remote.dest.with_name(remote.dest.name + _PART_SUFFIX)
    try:
        with open(temp, "wb") as out:
            out.writelines(chunks)
        # Written in several smaller parts by another client: the slower checks, from the file.
        if not verified and not _matches(source, remote, temp):
            raise TransferError(
                f"verification failed for {source.bucket}/{remote.key}: content does not match its ETag"
            )
        os.replace(temp, remote.dest)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise TransferError(f"cannot write {remote.dest}: {exc.strerror or exc}") from exc
    except TransferError:
        temp.unlink(missing_ok=True)
        raise


@dataclass
class _Streamed:
    """What the chunks of one large object fetched in this attempt saw as they streamed.

    Per chunk its CRC32, or its MD5 when the response carried no CRC of ours (`crcs`, `md5s`),
    and the CRCs the responses claimed (None: a response without one). More than one claim
    means the object changed between the chunks' GETs.
    """

    crcs: dict[int, int] = field(default_factory=dict)
    md5s: dict[int, bytes] = field(default_factory=dict)
    claimed: set[int | None] = field(default_factory=set)


def _chunk_fetchers(
    source: _Source | _SignedSource,
    remote: _Remote,
    progress: Callable[[int], None],
    streamed: _Streamed,
) -> list[Callable[[], None]]:
    """One task per missing chunk of `remote`, writing into its partial file."""
    part = remote.dest.with_name(remote.dest.name + _PART_SUFFIX)
    done_file = part.with_name(part.name + ".done")
    done: set[int] = set()
    if part.exists() and part.stat().st_size == remote.size and done_file.exists():
        marker = f"{remote.etag} {remote.size}"
        lines = done_file.read_text().split("\n")
        if lines and lines[0] == marker:
            done = {int(line) for line in lines[1:] if line.isdigit()}
    if not done:
        with open(part, "wb") as created:
            created.truncate(remote.size)
        done_file.write_text(f"{remote.etag} {remote.size}\n")
    count = max(1, -(-remote.size // PART_SIZE))
    lock = threading.Lock()

    bucket = source.bucket

    def fetcher(index: int) -> Callable[[], None]:
        def fetch() -> None:
            offset = index * PART_SIZE
            length = min(PART_SIZE, remote.size - offset)
            if length <= 0:
                return
            try:
                response = source.get(remote.key, offset, length)
                claimed = _claimed_crc(response)
                crc = 0
                digest = hashlib.md5(usedforsecurity=False)
                try:
                    fd = os.open(part, os.O_WRONLY)
                    try:
                        position = offset
                        for data in response.stream(_READ):
                            os.pwrite(fd, data, position)
                            if claimed is None:
                                digest.update(data)
                            else:
                                crc = zlib.crc32(data, crc)
                            position += len(data)
                            progress(len(data))
                    finally:
                        os.close(fd)
                finally:
                    response.close()
                    response.release_conn()
            except TransferError:
                raise
            except OSError as exc:
                raise TransferError(f"cannot write {remote.dest}: {exc.strerror or exc}") from exc
            except Exception as exc:
                raise _s3_failure("download", f"{bucket}/{remote.key}", exc) from exc
            if position - offset != length:
                raise TransferError(f"{bucket}/{remote.key}: got {position - offset} bytes of {length} at {offset}")
            with lock, open(done_file, "a") as record:
                streamed.claimed.add(claimed)
                if claimed is None:
                    streamed.md5s[index] = digest.digest()
                else:
                    streamed.crcs[index] = crc
                record.write(f"{index}\n")

        return fetch

    return [fetcher(index) for index in range(count) if index not in done]


def _matches(source: _Source | _SignedSource, remote: _Remote, path: Path | None = None) -> bool:
    """Whether the file (default: its destination) holds the object's bytes, by ETag or SHA-256."""
    digest = _digest_file(path or remote.dest)
    if digest.size != remote.size:
        return False
    if digest.etag() == remote.etag:
        return True
    if "-" in remote.etag:
        # Uploaded in parts of another size: try the part sizes that give its part count.
        parts = int(remote.etag.rsplit("-", 1)[1]) if remote.etag.rsplit("-", 1)[1].isdigit() else 0
        for part_size in _part_sizes_for(remote.size, parts):
            if part_size != PART_SIZE and _digest_file(path or remote.dest, part_size).etag() == remote.etag:
                return True
        # Else a SHA-256 the uploader attached (x-amz-meta-sha256), if any.
        try:
            sha = source.sha256(remote.key)
        except Exception:  # noqa: BLE001 - metadata we cannot read proves nothing
            return False
        return bool(sha) and sha == sha256_file(path or remote.dest)
    return False


def _streamed_etag(part: Path, size: int, md5s: dict[int, bytes]) -> str:
    """The PART_SIZE multipart ETag from the chunks' streamed MD5s (chunks resumed from disk re-read)."""
    count = max(1, -(-size // PART_SIZE))
    digests = []
    with open(part, "rb") as stream:
        for index in range(count):
            if index not in md5s:
                stream.seek(index * PART_SIZE)
                md5s[index] = hashlib.md5(stream.read(PART_SIZE), usedforsecurity=False).digest()
            digests.append(md5s[index])
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{count}"


def _streamed_crc(part: Path, size: int, crcs: dict[int, int]) -> int:
    """The CRC32 of the whole from the chunks' streamed CRCs (chunks resumed from disk re-read)."""
    whole = 0
    with open(part, "rb") as stream:
        for index, offset in enumerate(range(0, size, PART_SIZE)):
            length = min(PART_SIZE, size - offset)
            if index not in crcs:
                stream.seek(offset)
                crcs[index] = _crc_of(stream, length)
            whole = crc32_combine(whole, crcs[index], length)
    return whole


def _stored_crc(source: _Source | _SignedSource, remote: _Remote) -> int | None:
    """The object's CRC32 metadata, from the headers of a one-byte GET (works with presigned GETs)."""
    try:
        response = source.get(remote.key, 0, 1)
        try:
            return _claimed_crc(response)
        finally:
            response.close()
            response.release_conn()
    except TransferError:
        raise
    except Exception as exc:
        raise _s3_failure("read", f"{source.bucket}/{remote.key}", exc) from exc


def _finish_download(source: _Source | _SignedSource, remote: _Remote, streamed: _Streamed) -> None:
    bucket = source.bucket
    part = remote.dest.with_name(remote.dest.name + _PART_SUFFIX)
    done_file = part.with_name(part.name + ".done")
    # Every chunk came from an earlier attempt: no GET of this one said what the object claims.
    claimed = streamed.claimed or {_stored_crc(source, remote)}
    whole_size = part.stat().st_size == remote.size
    failure: TransferError | None = None
    if len(claimed) > 1:
        failure = TransferError(f"verification failed for {bucket}/{remote.key}: it changed while it was downloaded")
    elif (crc := next(iter(claimed))) is not None:
        # Ours: its CRC32 decides (the ETag's MD5 would only cost more).
        if not (whole_size and _streamed_crc(part, remote.size, streamed.crcs) == crc):
            failure = _crc_failure(bucket, remote.key)
    elif not (whole_size and _streamed_etag(part, remote.size, streamed.md5s) == remote.etag) and not _matches(
        source, remote, part
    ):
        failure = TransferError(f"verification failed for {bucket}/{remote.key}: content does not match its ETag")
    if failure is not None:
        part.unlink(missing_ok=True)
        done_file.unlink(missing_ok=True)
        raise failure
    os.replace(part, remote.dest)
    done_file.unlink(missing_ok=True)


# --- uploads --------------------------------------------------------------------------------


def upload_tree(
    src: Path,
    location: S3Location,
    relative_prefix: str = "",
    *,
    workers: int = DEFAULT_WORKERS,
    on_bytes: Callable[[int], None] | None = None,
    fresh: Fresh | None = None,
) -> TransferStats:
    """Every regular file under `src` to `<location prefix>/<relative_prefix>/<path>`, verified.

    Files the store already holds with the same size and ETag are skipped.
    """
    if not src.is_dir():
        raise TransferError(f"not a directory: {src}")
    if location.presigned:
        return _upload_signed(src, location, relative_prefix, workers, serialized(on_bytes))
    files: list[tuple[Path, str]] = []
    for path in sorted(src.rglob("*")):
        if path.is_symlink():
            raise TransferError(f"refusing to transfer a symlink: {path}")
        if path.is_file():
            relative = path.relative_to(src).as_posix()
            files.append((path, location.key(f"{relative_prefix.strip('/')}/{relative}".lstrip("/"))))
    s3 = client(location, workers, fresh)
    base = location.key(relative_prefix.strip("/"))
    there: dict[str, tuple[int, str]] = {}
    try:
        for item in s3.list_objects(location.bucket, prefix=(base + "/") if base else None, recursive=True):
            there[item.object_name or ""] = (item.size or 0, (item.etag or "").strip('"'))
    except Exception as exc:
        code = getattr(exc, "code", "")
        if code != "NoSuchBucket":
            raise _s3_failure("list", f"{location.bucket}/{base}", exc) from exc
    progress = serialized(on_bytes)
    journal = UploadJournal(location.endpoint)
    stats = TransferStats()
    big = [(path, key) for path, key in files if path.stat().st_size > PART_SIZE]
    small = [(path, key) for path, key in files if path.stat().st_size <= PART_SIZE]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="s3-put") as pool:
        futures = [
            pool.submit(_put, s3, location.bucket, path, key, there.get(key), 1, progress, journal)
            for path, key in small
        ]
        outcomes = _run_all(pool, futures)
    # Large files one at a time, each with all workers on its parts.
    outcomes += [_put(s3, location.bucket, path, key, there.get(key), workers, progress, journal) for path, key in big]
    for outcome, size in outcomes:
        stats.add(outcome, size)
    return stats


def upload_file(
    path: Path, location: S3Location, key: str, *, workers: int = DEFAULT_WORKERS, fresh: Fresh | None = None
) -> TransferStats:
    """One file to `key` (a full key), verified."""
    stats = TransferStats()
    if location.presigned:
        stats.add(*_post(_post_pool(workers), location, path, key, lambda count: None))
        return stats
    s3 = client(location, workers, fresh)
    journal = UploadJournal(location.endpoint)
    stats.add(*_put(s3, location.bucket, path, key, None, workers, lambda count: None, journal))
    return stats


def _put(
    s3: Any,
    bucket: str,
    path: Path,
    key: str,
    there: tuple[int, str] | None,
    parallel: int,
    progress: Callable[[int], None],
    journal: UploadJournal,
) -> tuple[Placed, int]:
    """One file, with its CRC32 as metadata (a large one resumable through `journal`).

    Verified as it is sent: the store checks each request's body against the hash minio sends
    with it (`x-amz-content-sha256` over HTTP, `Content-MD5` over HTTPS) and refuses a mismatch
    (XAmzContentSHA256Mismatch, BadDigest), so no MD5 of ours is needed for the ETag; the CRC32
    is taken before the upload starts (the metadata goes with its first request) and again from
    the bytes sent, which shows the file did not change in between.
    """
    try:
        size = path.stat().st_size
        if size <= PART_SIZE:
            # One part: read once, so the CRC32 is of exactly the bytes sent.
            data = path.read_bytes()
            size = len(data)
            if there is not None and there == (size, hashlib.md5(data, usedforsecurity=False).hexdigest()):
                return "skipped", size
            s3.put_object(
                bucket,
                key,
                io.BytesIO(data),
                size,
                part_size=PART_SIZE,
                metadata={CRC_METADATA: _crc_text(zlib.crc32(data))},
            )
            progress(size)
            return "copied", size
        if there is not None and there[0] == size:
            ahead = _digest_file(path, crc=True)  # its MD5s only where the store may hold the file already
            if ahead.etag() == there[1] and _stored_crc_agrees(s3, bucket, key, ahead.crc):
                return "skipped", size
            crc = ahead.crc
        else:
            crc = _file_crc(path, size, parallel)
        outcome = _multipart(s3, bucket, key, path, size, crc, parallel, progress, journal)
    except TransferError:
        raise
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise _s3_failure("upload", f"{bucket}/{key}", exc) from exc
    return outcome, size


class UploadJournal:
    """Where this machine notes the multipart uploads it has begun, until they complete, so that
    its next attempt resumes one. The store is not asked: a grant's session policy lets its holder
    list the parts of an upload, not a bucket's unfinished uploads (that would show other runs'
    keys), and an upload listed there may be another client's. In `DLAAS_TRANSFER_STATE_DIR`, else
    the user's cache (`~/.cache/dlaas/uploads`): one file (mode 0600) an upload in progress, named
    by a hash of endpoint, bucket and key, holding the upload id and the CRC32 of the content it
    was begun for. Where no note can be written, an upload that fails is aborted, not left."""

    def __init__(self, endpoint: str):
        self._endpoint = endpoint

    def _file(self, bucket: str, key: str) -> Path | None:
        configured = os.environ.get("DLAAS_TRANSFER_STATE_DIR")
        try:
            cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        except RuntimeError:  # no home directory
            return None
        root = Path(configured) if configured else Path(cache) / "dlaas" / "uploads"
        digest = hashlib.sha256(f"{self._endpoint}\n{bucket}\n{key}".encode()).hexdigest()
        return root / f"{digest}.json"

    def noted(self, bucket: str, key: str) -> tuple[str, int] | None:
        """The upload id noted for `key`, with the CRC32 of the content it was begun for."""
        target = self._file(bucket, key)
        if target is None:
            return None
        try:
            note = json.loads(target.read_text())
            upload_id, crc = note["upload_id"], note["crc32"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not (isinstance(upload_id, str) and upload_id and isinstance(crc, int)):
            return None
        return upload_id, crc

    def note(self, bucket: str, key: str, upload_id: str, crc: int) -> bool:
        """Notes an upload begun; False where it cannot be noted."""
        target = self._file(bucket, key)
        if target is None:
            return False
        temporary = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as stream:
                json.dump({"upload_id": upload_id, "crc32": crc, "bucket": bucket, "key": key}, stream)
            temporary.replace(target)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            return False
        return True

    def forget(self, bucket: str, key: str) -> None:
        target = self._file(bucket, key)
        if target is not None:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)

    def abandon(self, s3: Any, bucket: str, key: str, upload_id: str) -> None:
        """Aborts an upload there is no point resuming (best effort: the store may be gone) and forgets it."""
        with contextlib.suppress(Exception):
            s3._abort_multipart_upload(bucket, key, upload_id)
        self.forget(bucket, key)


def _part_ranges(size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, length) of each PART_SIZE part of a file of `size` bytes."""
    return [
        (index + 1, offset, min(PART_SIZE, size - offset)) for index, offset in enumerate(range(0, size, PART_SIZE))
    ]


class _FileChanged(TransferError):
    """The file changed while it was uploaded."""


def _multipart(
    s3: Any,
    bucket: str,
    key: str,
    path: Path,
    size: int,
    crc: int,
    parallel: int,
    progress: Callable[[int], None],
    journal: UploadJournal,
) -> Placed:
    """A large file as a multipart upload, its parts sent `parallel` at a time, resuming the upload
    an earlier attempt on this machine left unfinished (killed, or cut off from the store) and
    noted in `journal`: if it was begun for the same content (the CRC32 it was noted with), its
    parts whose ETag is the MD5 of the same range of the file now are kept, the others sent. An
    upload begun for other content (the file changed since) is aborted and a new one begun: its
    CRC32 metadata, set when it began, would be stale.

    An attempt that fails leaves its upload, noted, for the next one (minio's put_object aborts);
    one that could not note it aborts it. The CRC32 of the bytes read for sending (and of the parts
    kept) is checked against `crc`: a file that changes during the upload fails it.
    """
    from minio.datatypes import Part

    ranges = _part_ranges(size)
    upload_id, kept = _unfinished_upload(s3, journal, bucket, key, path, ranges, crc, parallel)
    noted = upload_id is not None
    if upload_id is None:
        headers = {"Content-Type": "application/octet-stream", CRC_METADATA: _crc_text(crc)}
        upload_id = s3._create_multipart_upload(bucket, key, headers)
        noted = journal.note(bucket, key, upload_id, crc)
    etags: dict[int, str] = {number: etag for number, (etag, _) in kept.items()}
    crcs: dict[int, int] = {number: part_crc for number, (_, part_crc) in kept.items()}
    for number, _, length in ranges:
        if number in kept:
            progress(length)
    try:
        with open(path, "rb") as stream:
            fd = stream.fileno()

            def send(number: int, offset: int, length: int) -> None:
                data = os.pread(fd, length, offset)
                if len(data) != length:
                    raise _FileChanged(f"{path} changed while it was uploaded to {bucket}/{key}")
                crcs[number] = zlib.crc32(data)
                etags[number] = s3._upload_part(bucket, key, data, None, upload_id, number)
                progress(length)

            pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="s3-part")
            try:
                _run_all(pool, [pool.submit(send, *r) for r in ranges if r[0] not in kept])
            finally:
                pool.shutdown(cancel_futures=True)  # Ctrl-C: the parts not yet started are not sent
        whole = crcs[1]
        for number, _, length in ranges[1:]:
            whole = crc32_combine(whole, crcs[number], length)
        if whole != crc:
            raise _FileChanged(f"{path} changed while it was uploaded to {bucket}/{key}")
    except BaseException as exc:
        if isinstance(exc, _FileChanged) or not noted:  # nothing to resume: the parts would only lie there
            journal.abandon(s3, bucket, key, upload_id)
        raise
    s3._complete_multipart_upload(bucket, key, upload_id, [Part(n, etags[n]) for n, _, _ in ranges])
    journal.forget(bucket, key)
    return "resumed" if kept else "copied"


def _unfinished_upload(
    s3: Any,
    journal: UploadJournal,
    bucket: str,
    key: str,
    path: Path,
    ranges: list[tuple[int, int, int]],
    crc: int,
    parallel: int,
) -> tuple[str | None, dict[int, tuple[str, int]]]:
    """The upload to `key` this machine noted and left unfinished, if it was begun for content
    of CRC32 `crc`, and, by part number, the ETag and CRC32 of its parts that hold this file's
    bytes. One begun for other content is aborted. None to resume: (None, {})."""
    from minio.error import S3Error

    noted = journal.noted(bucket, key)
    if noted is None:
        return None, {}
    upload_id, noted_crc = noted
    if noted_crc != crc:
        journal.abandon(s3, bucket, key, upload_id)
        return None, {}
    stored: dict[int, tuple[str, int]] = {}
    marker: str | None = None
    while True:
        try:
            page = s3._list_parts(bucket, key, upload_id, part_number_marker=marker)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise
            journal.forget(bucket, key)  # finished or aborted since it was noted
            return None, {}
        stored.update({p.part_number: ((p.etag or "").strip('"'), p.size or 0) for p in page.parts})
        if not page.is_truncated:
            break
        marker = str(page.next_part_number_marker)
    expected = {number: (offset, length) for number, offset, length in ranges}
    candidates = [n for n, (_, stored_size) in stored.items() if n in expected and expected[n][1] == stored_size]

    with (
        open(path, "rb") as stream,
        ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="s3-part-check") as pool,
    ):
        fd = stream.fileno()

        def check(number: int) -> tuple[int, tuple[str, int] | None]:
            offset, length = expected[number]
            data = os.pread(fd, length, offset)
            if hashlib.md5(data, usedforsecurity=False).hexdigest() != stored[number][0]:
                return number, None
            return number, (stored[number][0], zlib.crc32(data))

        checked = _run_all(pool, [pool.submit(check, n) for n in candidates])
    return upload_id, {number: kept for number, kept in checked if kept is not None}


def _stored_crc_agrees(s3: Any, bucket: str, key: str, crc: int) -> bool:
    """Whether an object with the file's ETag holds no CRC32 of ours or this one (not a stale one
    left by an upload during which the file changed)."""
    try:
        value = s3.stat_object(bucket, key).metadata.get(CRC_METADATA)
    except Exception:  # noqa: BLE001 - unknown: upload again
        return False
    return not value or value.lower() == _crc_text(crc)


def _post_pool(workers: int) -> Any:
    import urllib3

    return urllib3.PoolManager(maxsize=max(10, workers * 2), timeout=urllib3.Timeout(connect=10, read=600))


def _upload_signed(
    src: Path, location: S3Location, relative_prefix: str, workers: int, progress: Callable[[int], None]
) -> TransferStats:
    """Uploads through the grant's POST policy: one request per file (no multipart; at most 5 GB each)."""
    http = _post_pool(workers)
    files = [p for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()]
    stats = TransferStats()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="s3-post") as pool:
        futures = [
            pool.submit(
                _post,
                http,
                location,
                path,
                location.key(f"{relative_prefix.strip('/')}/{path.relative_to(src).as_posix()}".lstrip("/")),
                progress,
            )
            for path in files
        ]
        for outcome, size in _run_all(pool, futures):
            stats.add(outcome, size)
    return stats


def _post(http: Any, location: S3Location, path: Path, key: str, progress: Callable[[int], None]) -> tuple[Placed, int]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from exc
    digest = _EtagDigest(crc=True)
    digest.update(data)
    fields: dict[str, Any] = {**dict(location.post_fields), "key": key}
    if _policy_names(location.post_fields, CRC_METADATA):
        fields[CRC_METADATA] = _crc_text(digest.crc)
    fields["file"] = (path.name, data)  # the last field: the store reads no field after the file
    response = http.request("POST", location.post_url, fields=fields, retries=3)
    if response.status not in (200, 201, 204):
        raise TransferError(f"cannot upload {location.bucket}/{key}: {response.status} {_error_code(response.data)}")
    answered = (response.headers.get("ETag") or "").strip('"')
    if answered and answered != digest.etag():
        raise TransferError(f"verification failed for {location.bucket}/{key}: the store holds ETag {answered}")
    progress(len(data))
    return "copied", len(data)


def _policy_names(post_fields: tuple[tuple[str, str], ...], name: str) -> bool:
    """Whether the grant's POST policy has a condition on the form field `name`: the store refuses
    a field its policy does not name (policies issued before it allowed our CRC32 metadata)."""
    try:
        conditions = json.loads(base64.b64decode(dict(post_fields).get("policy", "")))["conditions"]
        wanted = name.lower()
        for condition in conditions:
            if isinstance(condition, list) and len(condition) == 3 and str(condition[1]).lower() == "$" + wanted:
                return True
            if isinstance(condition, dict) and wanted in (str(field).lower() for field in condition):
                return True
    except (ValueError, KeyError, TypeError):
        return False
    return False
