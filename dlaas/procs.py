"""Process checks shared by the launcher, the local backend and the tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process `pid` runs; a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return _stat(pid)[0] not in _GONE
    return True


_GONE = ("Z", "X")  # zombie, dead


def _stat(pid: int | str) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, … (the name may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _processes() -> list[tuple[int, list[str]]]:
    """Every process's pid and stat fields (see `_stat`), from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                found.append((int(entry.name), _stat(entry.name)))
    return found


def live_process_groups() -> set[int]:
    """Process groups with at least one process that runs (zombies do not count), from /proc."""
    return {int(fields[2]) for _, fields in _processes() if fields[0] not in _GONE}


def process_group_members(pgid: int) -> list[int]:
    """The pids of process group `pgid`'s members that run."""
    return [pid for pid, fields in _processes() if fields[0] not in _GONE and int(fields[2]) == pgid]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process `pid` has used so far, in seconds, from /proc."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
