"""Local file transfers shared by the runner and the CLI: copy a tree of files, verified.

Pure standard library, so the runner stays light. A file appears at its destination whole or
not at all (written under a temporary name in the destination folder, then renamed), files
already there with the same content are skipped, and symlinks or special files in the source
are refused rather than followed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

__all__ = [
    "TransferError",
    "TransferStats",
    "copy_file",
    "copy_tree",
    "safe_relpath",
    "sha256_file",
]

_CHUNK = 1 << 20
# os.link failures after which a copy still works: another device, a filesystem without hard
# links, too many links, or fs.protected_hardlinks refusing a file we do not own.
_LINK_FALLBACK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES})

Placed = Literal["copied", "linked", "skipped", "resumed"]


class TransferError(Exception):
    """A transfer refused a path or could not complete; the message names the path."""


@dataclass
class TransferStats:
    """What a transfer did.

    ``files`` and ``bytes`` count the files written to the destination (copied, linked or
    resumed) and their size; ``linked`` is how many of those were hard links, ``resumed`` how
    many were uploads an earlier attempt had begun, finished with the parts it left; ``skipped``
    counts files that were already at the destination with the same content.
    """

    files: int = 0
    bytes: int = 0
    skipped: int = 0
    linked: int = 0
    resumed: int = 0

    def add(self, outcome: Placed, size: int) -> None:
        if outcome == "skipped":
            self.skipped += 1
            return
        self.files += 1
        self.bytes += size
        if outcome == "linked":
            self.linked += 1
        if outcome == "resumed":
            self.resumed += 1


def safe_relpath(key: str) -> PurePosixPath:
    """The relative path an object key names, refusing anything that could leave its root."""
    if not key:
        raise TransferError("empty path")
    if "\x00" in key:
        raise TransferError(f"path contains a NUL byte: {key!r}")
    if "\\" in key:
        raise TransferError(f"path contains a backslash: {key!r}")
    if key.startswith("/"):
        raise TransferError(f"absolute path: {key!r}")
    parts = key.split("/")
    for part in parts:
        if part == "":
            raise TransferError(f"path has an empty part: {key!r}")
        if part in (".", ".."):
            raise TransferError(f"path has a {part!r} part: {key!r}")
    return PurePosixPath(*parts)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def copy_tree(
    src: Path,
    dst: Path,
    *,
    link: bool = False,
    verify: bool = True,
    on_bytes: Callable[[int], None] | None = None,
    workers: int = 4,
) -> TransferStats:
    """Copy every regular file under ``src`` to the same relative path under ``dst``.

    ``dst`` and the folders under it are created (empty folders included). Files already at
    ``dst`` with the same size and SHA-256 are skipped. With ``link`` a file is hard-linked
    (constant time whatever its size) and copied only where linking is impossible, for example
    across devices. With ``verify`` every copied file is re-read at its destination, under its
    temporary name, and compared with what was read from the source before it is renamed into
    place. A symlink or special file anywhere under ``src`` fails the whole transfer before
    anything is written. ``on_bytes`` receives byte counts as they move (for a progress bar);
    calls are serialized but may come from worker threads.
    """
    src_root = Path(src)
    try:
        root_stat = src_root.stat()
    except OSError as exc:
        raise TransferError(f"cannot read {src_root}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(root_stat.st_mode):
        raise TransferError(f"not a directory: {src_root}")
    folders, files = _plan(src_root)
    dst_root = Path(dst)
    try:
        dst_root.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            (dst_root / folder).mkdir(exist_ok=True)
    except OSError as exc:
        raise TransferError(f"cannot create folders under {dst_root}: {exc.strerror or exc}") from exc

    progress = serialized(on_bytes)
    stats = TransferStats()

    def place(rel: PurePosixPath, src_stat: os.stat_result) -> tuple[Placed, int]:
        outcome = _place_file(src_root / rel, dst_root / rel, src_stat, link=link, verify=verify, progress=progress)
        return outcome, src_stat.st_size

    if workers <= 1 or len(files) <= 1:
        for rel, src_stat in files:
            stats.add(*place(rel, src_stat))
        return stats
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="transfer") as pool:
        futures: list[Future[tuple[Placed, int]]] = [pool.submit(place, rel, st) for rel, st in files]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            failed.result()  # raises the first failure
        for future in futures:
            stats.add(*future.result())
    return stats


def copy_file(
    src: Path,
    dst: Path,
    *,
    link: bool = False,
    verify: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> TransferStats:
    """Copy one regular file to ``dst`` (its parent folder is created), like ``copy_tree``."""
    src_path = Path(src)
    try:
        src_stat = os.lstat(src_path)
    except OSError as exc:
        raise TransferError(f"cannot read {src_path}: {exc.strerror or exc}") from exc
    _refuse_unless_regular(src_path, src_stat)
    dst_path = Path(dst)
    try:
        dst_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferError(f"cannot create {dst_path.parent}: {exc.strerror or exc}") from exc
    stats = TransferStats()
    outcome = _place_file(src_path, dst_path, src_stat, link=link, verify=verify, progress=serialized(on_bytes))
    stats.add(outcome, src_stat.st_size)
    return stats


def _plan(src_root: Path) -> tuple[list[PurePosixPath], list[tuple[PurePosixPath, os.stat_result]]]:
    """Folders (parents first) and regular files under ``src_root``, refusing anything else."""
    folders: list[PurePosixPath] = []
    files: list[tuple[PurePosixPath, os.stat_result]] = []
    pending: list[PurePosixPath] = [PurePosixPath()]
    while pending:
        rel_dir = pending.pop()
        path = src_root / rel_dir
        try:
            with os.scandir(path) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
            for entry in listed:
                rel = rel_dir / entry.name
                entry_stat = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(entry_stat.st_mode):
                    folders.append(rel)
                    pending.append(rel)
                else:
                    _refuse_unless_regular(Path(entry.path), entry_stat)
                    files.append((rel, entry_stat))
        except OSError as exc:
            raise TransferError(f"cannot list {path}: {exc.strerror or exc}") from exc
    folders.sort(key=lambda folder: len(folder.parts))
    return folders, files


def _refuse_unless_regular(path: Path, path_stat: os.stat_result) -> None:
    if stat.S_ISLNK(path_stat.st_mode):
        raise TransferError(f"refusing to transfer a symlink: {path}")
    if not stat.S_ISREG(path_stat.st_mode):
        raise TransferError(f"refusing to transfer a special file: {path}")


def serialized(on_bytes: Callable[[int], None] | None) -> Callable[[int], None]:
    """A progress callback safe to call from several transfer threads at once."""
    if on_bytes is None:
        return lambda count: None
    lock = threading.Lock()
    callback = on_bytes

    def report(count: int) -> None:
        with lock:
            callback(count)

    return report


def _place_file(
    src: Path,
    dst: Path,
    src_stat: os.stat_result,
    *,
    link: bool,
    verify: bool,
    progress: Callable[[int], None],
) -> Placed:
    try:
        if _already_there(src, dst, src_stat):
            return "skipped"
        if link and _link_into_place(src, dst):
            progress(src_stat.st_size)
            return "linked"
        _copy_into_place(src, dst, src_stat, verify=verify, progress=progress)
        return "copied"
    except OSError as exc:
        raise TransferError(f"cannot transfer {src} to {dst}: {exc.strerror or exc}") from exc


def _already_there(src: Path, dst: Path, src_stat: os.stat_result) -> bool:
    try:
        dst_stat = os.lstat(dst)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(dst_stat.st_mode):
        raise TransferError(f"destination is a folder: {dst}")
    if not stat.S_ISREG(dst_stat.st_mode) or dst_stat.st_size != src_stat.st_size:
        return False
    if (dst_stat.st_dev, dst_stat.st_ino) == (src_stat.st_dev, src_stat.st_ino):
        return True
    return sha256_file(dst) == sha256_file(src)


def _temp_path(dst: Path) -> Path:
    # Short, so that a destination name at the filesystem's length limit still has room.
    return dst.with_name(f".dlaas-{os.urandom(8).hex()}.part")


def _link_into_place(src: Path, dst: Path) -> bool:
    temp = _temp_path(dst)
    try:
        os.link(src, temp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _LINK_FALLBACK_ERRNOS:
            return False
        raise
    try:
        os.replace(temp, dst)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return True


def _copy_into_place(
    src: Path,
    dst: Path,
    src_stat: os.stat_result,
    *,
    verify: bool,
    progress: Callable[[int], None],
) -> None:
    temp = _temp_path(dst)
    try:
        with open(src, "rb") as source:
            out_fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(out_fd, "wb") as target:
                expected = _copy_stream(source, target, progress)
        os.chmod(temp, stat.S_IMODE(src_stat.st_mode) & 0o777)
        os.utime(temp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))
        if verify:
            written = sha256_file(temp)
            if written != expected:
                raise TransferError(f"verification failed for {dst}: sha256 {written} != {expected} of {src}")
        os.replace(temp, dst)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _copy_stream(source: io.BufferedReader, target: io.BufferedWriter, progress: Callable[[int], None]) -> str:
    """Copy ``source`` to ``target``; the SHA-256 of what was read."""
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    while count := source.readinto(view):
        chunk = view[:count]
        digest.update(chunk)
        target.write(chunk)
        progress(count)
    return digest.hexdigest()
