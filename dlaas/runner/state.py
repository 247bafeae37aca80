"""Progress updates and JOB_DIR/state.json, the record the scheduler reconciles from."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dlaas.types.v1 import run_pb2

logger = logging.getLogger("dlaas.runner")

TERMINAL_STATES = frozenset({run_pb2.RUN_STATE_COMPLETED, run_pb2.RUN_STATE_FAILED, run_pb2.RUN_STATE_CANCELLED})


@dataclass(frozen=True, eq=False)
class Progress:
    """A state the runner entered, as reported to the scheduler (compared by identity)."""

    state: run_pb2.RunState.ValueType
    event_time_ns: int
    exit_code: int | None = None
    termination_reason: run_pb2.TerminationReason.ValueType = run_pb2.TERMINATION_REASON_UNSPECIFIED
    message: str = ""
    log_tail: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


def rfc3339(time_ns: int) -> str:
    """UTC, microseconds, ``Z``: ``2025-01-02T03:04:05.123456Z``."""
    moment = datetime.fromtimestamp(time_ns / 1e9, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class StateFile:
    """JOB_DIR/state.json, replaced atomically on every change.

    The runner records a state here before reporting it, and marks it ``reported`` once the
    scheduler has acknowledged it, so a restarted scheduler can pick up what it missed.
    ``command_pgid`` (the process group of the user's command, null until it starts) lets a
    backend remove the command if the runner itself was killed.
    """

    def __init__(self, path: Path, attempt: int) -> None:
        self.path = path
        self._attempt = attempt
        self._lock = threading.Lock()
        self._current: Progress | None = None
        self._reported = False
        self._command_pgid: int | None = None

    def record(self, progress: Progress) -> None:
        with self._lock:
            self._current = progress
            self._reported = False
            self._write()

    def mark_reported(self, progress: Progress) -> None:
        """Mark ``progress`` acknowledged, unless a later state has been recorded since."""
        with self._lock:
            if self._current is progress and not self._reported:
                self._reported = True
                self._write()

    def set_command_pgid(self, pgid: int) -> None:
        with self._lock:
            self._command_pgid = pgid
            if self._current is not None:
                self._write()

    def document(self) -> dict[str, Any]:
        with self._lock:
            return self._document()

    def _document(self) -> dict[str, Any]:
        progress = self._current
        if progress is None:
            raise ValueError("no state recorded yet")
        return {
            "attempt": self._attempt,
            "state": run_pb2.RunState.Name(progress.state),
            "event_time": rfc3339(progress.event_time_ns),
            "exit_code": progress.exit_code,
            "termination_reason": run_pb2.TerminationReason.Name(progress.termination_reason),
            "message": progress.message,
            "log_tail": list(progress.log_tail),
            "reported": self._reported,
            "command_pgid": self._command_pgid,
        }

    def _write(self) -> None:
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temp.write_text(json.dumps(self._document(), indent=2) + "\n", encoding="utf-8")
            os.replace(temp, self.path)
        except OSError as exc:
            logger.error("cannot write %s: %s", self.path, exc)


@dataclass(frozen=True)
class LastWord:
    """What a runner left in its state.json, as a backend reads it once the runner is gone."""

    progress: Progress
    command_pgid: int | None


def read_state(path: Path) -> LastWord | None:
    """The state.json that `StateFile` writes, or None when there is none or it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        state = run_pb2.RunState.Value(str(data["state"]))
        reason = run_pb2.TerminationReason.Value(
            str(data.get("termination_reason") or "TERMINATION_REASON_UNSPECIFIED")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    exit_code, pgid, tail = data.get("exit_code"), data.get("command_pgid"), data.get("log_tail")
    progress = Progress(
        state=state,
        event_time_ns=0,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        termination_reason=reason,
        message=str(data.get("message") or ""),
        log_tail=tuple(str(line) for line in tail) if isinstance(tail, list) else (),
    )
    return LastWord(progress, pgid if isinstance(pgid, int) else None)
