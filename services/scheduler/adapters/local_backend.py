"""The local backend: each run's runner is a process of this machine, in its own session.

Runners outlive the scheduler: they are started with start_new_session, so a scheduler that
dies (even by kill -9) leaves them running; on start the scheduler adopts them by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from dlaas.procs import alive
from dlaas.runner.config import RunnerConfig, remove_secrets
from dlaas.runner.state import LastWord, read_state
from dlaas.types.v1 import run_pb2
from services.scheduler.adapters.backend import NodesChanged
from services.scheduler.domain.model import Allocation

log = logging.getLogger(__name__)


class LocalBackend:
    def __init__(self, jobs_dir: Path):
        self.jobs_dir = jobs_dir.resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._standby: asyncio.subprocess.Process | None = None
        self._standby_task: asyncio.Future[None] | None = None

    def refusal(self, spec: run_pb2.RunSpec) -> tuple[str, str] | None:
        if spec.resources.learners > 1:
            return (
                "several learners need the kubernetes backend; the local backend runs one learner",
                "LEARNERS_UNSUPPORTED",
            )
        return None

    def watch_nodes(self, on_change: NodesChanged) -> None:
        """This machine's GPUs were found at start and do not change."""

    async def sync(self) -> None:
        """Runners are found by their pid files, when asked."""

    def started(self, run: str, attempt: int) -> bool:
        return self.pid(run, attempt) is not None

    def job_dir(self, run: str, attempt: int) -> Path:
        # accounts/{account}/runs/{run} → JOBS/{account}/{run}-a{attempt}
        parts = run.split("/")
        return self.jobs_dir / parts[1] / f"{parts[3]}-a{attempt}"

    async def start(
        self, launch: RunnerConfig, allocations: Sequence[Allocation] = (), spec: run_pb2.RunSpec | None = None
    ) -> int:
        job_dir = launch.job_dir
        job_dir.mkdir(parents=True, exist_ok=True)
        config_path = launch.write(job_dir / "runner.json")
        process = await self._take_standby(config_path, job_dir / "runner.pid")
        if process is None:
            process = await self._spawn([str(config_path)], job_dir / "runner.log", job_dir)
            (job_dir / "runner.pid").write_text(str(process.pid))
        self._processes[self._key(launch.run, launch.attempt)] = process
        self.warm()
        return process.pid

    async def _spawn(self, args: list[str], log_path: Path, cwd: Path) -> asyncio.subprocess.Process:
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dlaas.runner",
                *args,
                stdin=subprocess.PIPE if args == ["--standby"] else subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own session: it outlives the scheduler
                env=env,
                cwd=cwd,
            )
        finally:
            log.close()

    def warm(self) -> None:
        """Starts the standby runner ahead of the first run."""
        self._standby_task = asyncio.ensure_future(self._prepare_standby())

    async def _prepare_standby(self) -> None:
        """Keeps one runner started and imported, waiting for its runner.json (see `--standby`)."""
        if self._standby is None or self._standby.returncode is not None:
            self._standby = await self._spawn(["--standby"], self.jobs_dir / "standby.log", self.jobs_dir)

    async def _take_standby(self, config_path: Path, pid_file: Path) -> asyncio.subprocess.Process | None:
        if self._standby_task is not None:
            try:
                await self._standby_task
            except Exception:
                log.exception("could not start a standby runner")
            self._standby_task = None
        process, self._standby = self._standby, None
        if process is None or process.returncode is not None or process.stdin is None:
            return None
        # The pid is on disk before the runner learns its run: a restarted scheduler finds it either way.
        pid_file.write_text(str(process.pid))
        try:
            process.stdin.write(f"{config_path}\n".encode())
            await process.stdin.drain()
            process.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pid_file.unlink(missing_ok=True)
            return None
        return process

    async def close(self) -> None:
        """Ends the standby runner (running runners are left alone: they outlive the scheduler)."""
        if self._standby_task is not None:
            with contextlib.suppress(Exception):
                await self._standby_task
        if self._standby is not None and self._standby.stdin is not None:
            self._standby.stdin.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._standby.wait(), 5)

    @staticmethod
    def _key(run: str, attempt: int) -> str:
        return f"{run}#{attempt}"

    async def wait(self, run: str, attempt: int) -> None:
        """Returns when the attempt's runner process has exited (started here or adopted)."""
        process = self._processes.get(self._key(run, attempt))
        if process is not None:
            await process.wait()
            self._processes.pop(self._key(run, attempt), None)
            return
        pid = self.pid(run, attempt)
        # An adopted runner is not our child: nothing to wait on but its pid.
        while pid is not None and alive(pid):
            await asyncio.sleep(1.0)

    def pid(self, run: str, attempt: int) -> int | None:
        try:
            return int((self.job_dir(run, attempt) / "runner.pid").read_text())
        except (OSError, ValueError):
            return None

    def is_alive(self, run: str, attempt: int) -> bool:
        process = self._processes.get(self._key(run, attempt))
        if process is not None:
            return process.returncode is None
        pid = self.pid(run, attempt)
        return pid is not None and alive(pid)

    def cancel(self, run: str, attempt: int) -> bool:
        """Asks the runner to stop the command and upload; False when no runner is alive."""
        pid = self.pid(run, attempt)
        if pid is None or not self.is_alive(run, attempt):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            return True
        return False

    def kill_command(self, run: str, attempt: int) -> None:
        """Kills what is left of the attempt's command (its process group) once its runner is gone,
        and removes the secrets a runner that died (kill -9, out of memory) left in its runner.json."""
        last = self.final_state(run, attempt)
        pgid = last.command_pgid if last else None
        if pgid is not None and pgid > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        config = self.job_dir(run, attempt) / "runner.json"
        if not remove_secrets(config):
            log.warning("could not remove the secrets from %s", config)

    def kill_runner(self, run: str, attempt: int) -> None:
        """Kills a runner that did not stop when asked, and its command."""
        pid = self.pid(run, attempt)
        if pid is not None and self.is_alive(run, attempt):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.kill_command(run, attempt)

    def final_state(self, run: str, attempt: int) -> LastWord | None:
        """What the runner last wrote to state.json, for reconciling after it is gone."""
        return read_state(self.job_dir(run, attempt) / "state.json")

    def log_path(self, run: str, attempt: int) -> Path:
        return self.job_dir(run, attempt) / "training.log"

    async def read_log(self, run: str, attempt: int, follow: bool, is_live: Any) -> AsyncIterator[bytes]:
        """The run's log from the start; with follow, new output until `is_live()` turns false."""
        path = self.log_path(run, attempt)
        offset = 0
        while True:
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            if not follow or not await is_live():
                final = await asyncio.to_thread(_read_from, path, offset)
                if final:
                    yield final
                return
            await asyncio.sleep(0.05)  # a followed line arrives within ~25 ms on average (make bench-logs)


def _read_from(path: Path, offset: int, limit: int = 256 * 1024) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""
