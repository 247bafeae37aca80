"""The user's command as a process group, and waiting on it without polling."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType

KILL_GRACE_S = 5.0
_GROUP_POLL_S = 0.05
_PR_SET_CHILD_SUBREAPER = 36


class Waker:
    """Lets the main thread sleep until a signal arrives, another thread calls ``wake``, a file
    descriptor becomes readable, or a timeout passes.

    Signal handlers only record the signal; Python's wakeup fd (the same self-pipe ``wake``
    writes to) interrupts the wait, so nothing is done inside a handler.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup_fd: int | None = None
        self._previous_handlers: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def install(self, signals: Iterable[signal.Signals], on_signal: Callable[[int], None]) -> None:
        """Handle ``signals`` with ``on_signal`` (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            on_signal(signum)

        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in signals:
            self._previous_handlers[signum] = signal.signal(signum, handler)

    def uninstall(self) -> None:
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous_handlers.clear()
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None

    def wake(self) -> None:
        """Interrupt the main thread's wait (callable from any thread)."""
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            os.write(self._write_fd, b"\0")

    def wait(self, fd: int | None, timeout_s: float | None) -> bool:
        """Wait for a wake-up, for ``fd`` to become readable, or ``timeout_s``; True if ``fd`` is."""
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        if fd is not None:
            poller.register(fd, select.POLLIN)
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000) + 1)
        events = poller.poll(timeout_ms)
        ready = {event_fd for event_fd, _ in events}
        if self._read_fd in ready:
            self._drain()
        return fd is not None and fd in ready

    def sleep(self, seconds: float) -> None:
        self.wait(None, seconds)

    def close(self) -> None:
        self.uninstall()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _drain(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except BlockingIOError:
            pass


class Command:
    """``/bin/sh -c COMMAND`` in a new session: its own process group, killed as a whole.

    The group leader is not reaped until the group has been sent SIGKILL, so its id cannot be
    reused by another process while we signal the group.
    """

    def __init__(self, command: str, *, cwd: Path, env: Mapping[str, str], log_fd: int) -> None:
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
        self.pgid = self.process.pid
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(self.process.pid)
            except OSError:
                self._pidfd = None  # kernel before 5.3: poll instead

    def has_exited(self) -> bool:
        """Whether the leader exited (without reaping it)."""
        if self.process.returncode is not None:
            return True
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self.process.pid, flags) is not None

    def wait_exit(self, waker: Waker, timeout_s: float | None) -> bool:
        """Wait until the leader exits, ``waker`` wakes, or the timeout; True if it exited."""
        if self.has_exited():
            return True
        if self._pidfd is not None:
            return waker.wait(self._pidfd, timeout_s) or self.has_exited()
        waker.wait(None, _GROUP_POLL_S if timeout_s is None else min(timeout_s, _GROUP_POLL_S))
        return self.has_exited()

    def finish(self) -> int:
        """After the leader exited: SIGKILL what is left of the group, reap, the exit code."""
        self._signal_group(signal.SIGKILL)
        return self._reap()

    def stop(self, waker: Waker, grace_s: float = KILL_GRACE_S) -> int:
        """SIGTERM the group, give it ``grace_s`` to exit, then SIGKILL it; the exit code."""
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while not self.has_exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._signal_group(signal.SIGKILL)
                return self._reap()
            self.wait_exit(waker, remaining)
        exit_code = self._reap()
        # The shell may be gone while its children still save their work: wait for the group.
        while self._group_alive() and time.monotonic() < deadline:
            waker.sleep(_GROUP_POLL_S)
            self._reap_orphans()
        self._signal_group(signal.SIGKILL)
        self._reap_orphans()
        return exit_code

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _reap(self) -> int:
        returncode = self.process.wait()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._reap_orphans()
        return exit_code_of(returncode)

    def _reap_orphans(self) -> None:
        """Reap exited members of the group that were reparented to us (we are a subreaper, or
        PID 1 in a container): left as zombies they would keep the group alive."""
        while True:
            try:
                if os.waitid(os.P_PGID, self.pgid, os.WEXITED | os.WNOHANG) is None:
                    return
            except ChildProcessError:
                return


def become_subreaper() -> bool:
    """Have orphaned descendants reparented to this process rather than to PID 1 (Linux), so
    that the command's leftovers can be reaped and waited for; False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def exit_code_of(returncode: int) -> int:
    """Popen's return code as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode
