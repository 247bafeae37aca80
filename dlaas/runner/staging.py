"""Putting a run's inputs in place: the model code archive and the training data."""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dlaas import transfer

MAX_ARCHIVE_MEMBERS = 10_000
MAX_ARCHIVE_BYTES = 1 << 30


class StagingError(Exception):
    """An input could not be put in place; the message is meant for the user."""


class UnsafeArchiveError(StagingError):
    """The code archive holds something that must not be extracted."""


@dataclass(frozen=True)
class ExtractStats:
    files: int
    bytes: int


def extract_code_archive(
    archive: Path,
    dest: Path,
    *,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_bytes: int = MAX_ARCHIVE_BYTES,
) -> ExtractStats:
    """Extract a (gzipped) tar into ``dest``, refusing anything that could escape it.

    Refused: absolute names, ``..`` parts, links whose target leaves ``dest``, devices, FIFOs,
    more than ``max_members`` members and more than ``max_bytes`` of file content. The archive is
    read once, as a stream; what passes these checks is extracted through tarfile's ``data``
    filter as a second line of defence.
    """
    dest.mkdir(parents=True, exist_ok=True)
    members = 0
    files = 0
    total = 0
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                members += 1
                if members > max_members:
                    raise UnsafeArchiveError(f"code archive has more than {max_members} members")
                check_member(member)
                if member.isreg():
                    files += 1
                    total += member.size
                    if total > max_bytes:
                        raise UnsafeArchiveError(f"code archive holds more than {_mib(max_bytes)} of files")
                tar.extract(member, dest, set_attrs=True, filter="data")
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"code archive refused: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise StagingError(f"code archive {archive.name} is not a readable tar archive: {exc}") from exc
    except OSError as exc:
        raise StagingError(f"cannot extract code archive {archive.name}: {exc.strerror or exc}") from exc
    return ExtractStats(files=files, bytes=total)


def check_member(member: tarfile.TarInfo) -> None:
    """Raise UnsafeArchiveError unless ``member`` stays inside the extraction folder."""
    name = member.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise UnsafeArchiveError(f"code archive member has an absolute path: {name!r}")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"code archive member has a '..' part: {name!r}")
    if member.issym():
        if member.linkname.startswith("/"):
            raise UnsafeArchiveError(f"code archive symlink {name!r} points to an absolute path")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if _leaves_root(target):
            raise UnsafeArchiveError(f"code archive symlink {name!r} points outside the archive")
    elif member.islnk():
        if member.linkname.startswith("/") or _leaves_root(posixpath.normpath(member.linkname)):
            raise UnsafeArchiveError(f"code archive hard link {name!r} points outside the archive")
    elif not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(f"code archive member {name!r} is a device or special file")


def _leaves_root(normalized: str) -> bool:
    return normalized == ".." or normalized.startswith("../") or normalized.startswith("/")


def stage_data(data_path: Path | None, dest: Path) -> transfer.TransferStats:
    """Put the training data at ``dest``: hard links where possible, verified copies elsewhere.

    ``data_path`` is a folder of the object store (every file under it is staged) or a single
    object (staged under its own name). None stages nothing: ``dest`` is left empty.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if data_path is None:
        return transfer.TransferStats()
    if data_path.is_dir():
        return transfer.copy_tree(data_path, dest, link=True, verify=True)
    if data_path.is_file():
        return transfer.copy_file(data_path, dest / data_path.name, link=True, verify=True)
    raise StagingError(f"training data not found at {data_path}")


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB"
