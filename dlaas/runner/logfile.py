"""JOB_DIR/training.log: the command's output, the runner's own ``[dlaas]`` lines, its tail."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PREFIX = "[dlaas] "
TAIL_LINES = 20
TAIL_LINE_CHARS = 500
_TAIL_READ_LIMIT = 1 << 20


class TrainingLog:
    """Appends the runner's lines to the log the command also writes to.

    The file is opened with O_APPEND and each line is one write, so the runner's lines never
    land inside a line of the command's (the command writes through its own descriptor).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def fileno(self) -> int:
        return self._fd

    def line(self, text: str) -> None:
        """Write ``[dlaas] text``. Keep ``name=value`` out of it: such lines read as metrics."""
        data = (PREFIX + text.replace("\n", " ") + "\n").encode("utf-8", errors="replace")
        with contextlib.suppress(OSError):  # a full disk must not stop the run from reporting its end
            os.write(self._fd, data)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def tail_lines(
    path: Path,
    *,
    end: int | None = None,
    lines: int = TAIL_LINES,
    max_chars: int = TAIL_LINE_CHARS,
) -> list[str]:
    """The last ``lines`` lines of the file's first ``end`` bytes (all of it by default).

    A line rewritten with carriage returns (a progress bar) keeps its last version, blank lines
    are dropped, and each line is cut to ``max_chars`` characters. Reads at most 1 MiB.
    """
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size if end is None else end
            start = max(0, size - _TAIL_READ_LIMIT)
            stream.seek(start)
            data = stream.read(size - start)
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    candidates = text.split("\n")
    if start > 0:
        candidates = candidates[1:]  # the first one is probably a partial line
    kept: list[str] = []
    for raw in reversed(candidates):
        line = raw.rstrip("\r").rsplit("\r", 1)[-1].rstrip()
        if not line:
            continue
        kept.append(line[:max_chars])
        if len(kept) == lines:
            break
    kept.reverse()
    return kept


def human_size(count: int) -> str:
    """``123 B``, ``45 KiB``, ``1.5 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            if unit == "B":
                return f"{count} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def files_phrase(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
