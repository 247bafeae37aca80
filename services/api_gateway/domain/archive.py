"""A submitted code archive, checked before anything is stored: the same rules the runner applies
when it extracts (dlaas.runner.staging), so that a bad archive is refused at once, naming the
field, instead of failing the run later."""

from __future__ import annotations

import io
import tarfile
import zlib

from dlaas.runner.staging import MAX_ARCHIVE_BYTES, UnsafeArchiveError, check_member
from services.common.errors import InvalidArgument


def check_code_archive(archive: bytes, max_bytes: int, max_files: int) -> None:
    if not archive:
        return
    if len(archive) > max_bytes:
        raise InvalidArgument.field("code_archive", f"is {len(archive)} bytes; at most {max_bytes} are accepted")
    members = total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r|*") as tar:
            for member in tar:
                members += 1
                if members > max_files:
                    raise InvalidArgument.field("code_archive", f"holds more than {max_files} files and folders")
                check_member(member)
                if member.isreg():
                    total += member.size
                    if total > MAX_ARCHIVE_BYTES:
                        raise InvalidArgument.field(
                            "code_archive", f"unpacks to more than {MAX_ARCHIVE_BYTES >> 20} MiB"
                        )
    except UnsafeArchiveError as exc:
        raise InvalidArgument.field("code_archive", str(exc)) from exc
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidArgument.field("code_archive", f"is not a readable (gzipped) tar archive: {exc}") from exc
