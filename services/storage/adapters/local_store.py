"""The platform's local object store: a directory, `<root>/<account>/<bucket>/<key>`.

Buckets live under their account's directory, so one account's locations never reach
another's. Blocking filesystem work runs in worker threads, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.storage.domain.locations import prefix_parts
from services.storage.domain.model import (
    AccessMethod,
    AccessMode,
    LocalPath,
    Location,
    ObjectMeta,
    ObjectPage,
    Purge,
    under_folder,
)

_CHUNK = 1024 * 1024
# Temporary files of writes in progress: beside the accounts, where no bucket or account can be
# (account and bucket names begin with a letter or digit), so listings never see them.
_STAGING = ".staging"


class LocalObjectStore:
    def __init__(self, root: Path):
        self.root = root.expanduser().resolve()

    async def grant(
        self, account: str, grant_id: str, accesses: Sequence[tuple[Location, AccessMode]], expire_ms: int
    ) -> list[AccessMethod]:
        return [await asyncio.to_thread(self._grant_access, account, location, mode) for location, mode in accesses]

    async def revoke(self, account: str, grant_id: str) -> None:
        # Nothing to take back on the file system, which knows no grants: the broker marks the grant
        # revoked in its table, and a runner confirms its grant (RenewGrant, refused once revoked or
        # expired) right before it stages from or writes to these paths. A process of this machine
        # running as the same user can still open them; docs/storage.md says so.
        return None

    async def write_object(self, account: str, location: Location, data: bytes) -> ObjectMeta:
        return await asyncio.to_thread(self._write_object, account, location, data)

    async def list_objects(self, account: str, location: Location, offset: int, limit: int) -> ObjectPage:
        return await asyncio.to_thread(self._list_objects, account, location, offset, limit)

    async def purge_objects(self, account: str, location: Location, force: bool) -> Purge:
        return await asyncio.to_thread(self._purge_objects, account, location, force)

    def _purge_objects(self, account: str, location: Location, force: bool) -> Purge:
        bucket_dir = self._bucket_dir(account, location.bucket)
        target = bucket_dir.joinpath(*prefix_parts(location.prefix))
        if not bucket_dir.is_dir() or not (target.is_dir() or target.is_file()):
            return Purge(0, ())
        self._inside_bucket(bucket_dir, target)
        start = target if target.is_dir() else target.parent
        keys = sorted(key for key in _walk_keys(bucket_dir, start) if under_folder(location.prefix, key))
        if force:
            for key in keys:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(bucket_dir / key)
            # Folders left empty go too, up to the bucket (which stays).
            if target.is_dir():
                for directory, _dirs, _files in os.walk(target, topdown=False):
                    if Path(directory) != bucket_dir:
                        with contextlib.suppress(OSError):
                            os.rmdir(directory)
            parent = target.parent
            while parent != bucket_dir and parent.is_relative_to(bucket_dir):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        return Purge(len(keys), tuple(keys[:100]))

    def _bucket_dir(self, account: str, bucket: str) -> Path:
        return self.root / account / bucket

    def _inside_bucket(self, bucket_dir: Path, path: Path) -> None:
        """Refuses `path` if links inside the store lead it out of its bucket."""
        real_bucket = os.path.realpath(bucket_dir)
        real = os.path.realpath(path)
        if real != real_bucket and not real.startswith(real_bucket + os.sep):
            raise FailedPrecondition(
                "the location leads out of its bucket through a symbolic link",
                reason="LOCATION_OUTSIDE_BUCKET",
            )

    def _grant_access(self, account: str, location: Location, mode: AccessMode) -> LocalPath:
        bucket_dir = self._bucket_dir(account, location.bucket)
        path = bucket_dir.joinpath(*prefix_parts(location.prefix))
        self._inside_bucket(bucket_dir, path)
        if mode is AccessMode.WRITE:
            _make_dirs(path, location)
            self._inside_bucket(bucket_dir, path)
        return LocalPath(str(path))

    def _write_object(self, account: str, location: Location, data: bytes) -> ObjectMeta:
        bucket_dir = self._bucket_dir(account, location.bucket)
        target = bucket_dir.joinpath(*prefix_parts(location.prefix))
        self._inside_bucket(bucket_dir, target.parent)
        _make_dirs(target.parent, location)
        self._inside_bucket(bucket_dir, target.parent)
        staging = self.root / _STAGING
        staging.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=staging, prefix="write-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fchmod(file.fileno(), 0o644)
                os.fsync(file.fileno())
                # A rename keeps the modification time: this is the object's update time.
                update_ms = os.fstat(file.fileno()).st_mtime_ns // 1_000_000
            try:
                os.replace(temp, target)
            except (IsADirectoryError, NotADirectoryError) as exc:
                raise _path_conflict(location) from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(target.parent)
        return ObjectMeta(
            bucket=location.bucket,
            key=location.prefix,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            update_ms=update_ms,
        )

    def _list_objects(self, account: str, location: Location, offset: int, limit: int) -> ObjectPage:
        bucket_dir = self._bucket_dir(account, location.bucket)
        if not bucket_dir.is_dir():
            return ObjectPage((), more=False)
        # S3 semantics: the prefix is a string prefix of keys ("data/tr" matches "data/train/1"),
        # so the walk starts at the deepest directory the prefix names whole.
        parts = prefix_parts(location.prefix)
        whole = parts if location.prefix.endswith("/") else parts[:-1]
        start = bucket_dir.joinpath(*whole)
        self._inside_bucket(bucket_dir, start)
        keys = sorted(key for key in _walk_keys(bucket_dir, start) if key.startswith(location.prefix))
        page = keys[offset : offset + limit]
        objects = []
        for key in page:
            meta = _describe(bucket_dir, location.bucket, key)
            if meta is not None:  # gone since the walk
                objects.append(meta)
        return ObjectPage(tuple(objects), more=offset + limit < len(keys))


def _path_conflict(location: Location) -> FailedPrecondition:
    return FailedPrecondition(
        f"{location.bucket}/{location.prefix} conflicts with an existing object or prefix: on the local store "
        "a key cannot be both an object and a prefix of other objects",
        reason="OBJECT_PATH_CONFLICT",
    )


def _make_dirs(path: Path, location: Location) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise _path_conflict(location) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk_keys(bucket_dir: Path, start: Path) -> list[str]:
    """Keys of the regular files under `start` (symbolic links are not objects)."""
    keys = []
    for directory, _dirs, files in os.walk(start):
        for file in files:
            path = os.path.join(directory, file)
            if os.path.islink(path):
                continue
            key = os.path.relpath(path, bucket_dir).replace(os.sep, "/")
            try:
                key.encode()
            except UnicodeEncodeError:
                continue  # a file name that is not UTF-8 cannot be a key
            keys.append(key)
    return keys


def _describe(bucket_dir: Path, bucket: str, key: str) -> ObjectMeta | None:
    path = bucket_dir / key
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return ObjectMeta(
        bucket=bucket,
        key=key,
        size_bytes=stat.st_size,
        sha256=digest.hexdigest(),
        update_ms=stat.st_mtime_ns // 1_000_000,
    )
