"""The local backend: each run's runner is a process of this machine, in its own session.

Runners outlive the scheduler: they are started with start_new_session, so a scheduler that
dies (even by kill -9) leaves them running; on start the scheduler adopts them by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dlaas.procs import alive
from dlaas.runner.config import RunnerConfig

log = logging.getLogger(__name__)


class LocalBackend:
    def __init__(self, jobs_dir: Path):
        self.jobs_dir = jobs_dir.resolve()
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._processes: dict[str, asyncio.subprocess.Process] = {}

    def job_dir(self, run: str, attempt: int) -> Path:
        # accounts/{account}/runs/{run} → JOBS/{account}/{run}-a{attempt}
        parts = run.split("/")
        return self.jobs_dir / parts[1] / f"{parts[3]}-a{attempt}"

    async def start(self, launch: RunnerConfig) -> int:
        job_dir = launch.job_dir
        job_dir.mkdir(parents=True, exist_ok=True)
        config_path = launch.write(job_dir / "runner.json")
        runner_log = open(job_dir / "runner.log", "ab")  # noqa: SIM115 - handed to the child
        env = {k: v for k, v in os.environ.items() if not k.startswith("DLAAS_")}
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dlaas.runner",
                str(config_path),
                stdin=subprocess.DEVNULL,
                stdout=runner_log,
                stderr=runner_log,
                start_new_session=True,
                env=env,
                cwd=job_dir,
            )
        finally:
            runner_log.close()
        (job_dir / "runner.pid").write_text(str(process.pid))
        self._processes[self._key(launch.run, launch.attempt)] = process
        return process.pid

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

    def final_state(self, run: str, attempt: int) -> dict[str, Any] | None:
        """What the runner last wrote to state.json, for reconciling after a restart."""
        try:
            data = json.loads((self.job_dir(run, attempt) / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

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
            await asyncio.sleep(0.2)


def _read_from(path: Path, offset: int, limit: int = 256 * 1024) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""
