"""What the scheduler's runtime asks of a backend: start, watch, stop and read the runners of runs.

Two backends satisfy it: `local` (processes of this machine) and `kubernetes` (pods bound by our
scheduler). Both start the same runner (`python -m dlaas.runner runner.json`). Queries the
runtime makes under its lock (`is_alive`, `started`, `cancel`, ...) are synchronous: a backend
answers them from what it knows (the process table, or its watch of the pods) and does slow
work, such as deleting pods, in the background.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from dlaas.runner.config import RunnerConfig
from dlaas.runner.state import LastWord
from dlaas.types.v1 import run_pb2
from services.scheduler.domain.model import Allocation, Node

NodesChanged = Callable[[list[Node]], None]


class Backend(Protocol):
    def refusal(self, spec: run_pb2.RunSpec) -> tuple[str, str] | None:
        """(message, reason) when this backend can never run such a run; checked at submission."""
        ...

    def job_dir(self, run: str, attempt: int) -> Path:
        """The attempt's job directory as the runner sees it."""
        ...

    async def start(self, launch: RunnerConfig, allocations: Sequence[Allocation], spec: run_pb2.RunSpec) -> object:
        """Starts the attempt's runner on each learner's allocation, all of them or none (raises)."""
        ...

    def warm(self) -> None: ...

    async def close(self) -> None: ...

    def watch_nodes(self, on_change: NodesChanged) -> None:
        """Calls `on_change` with the schedulable nodes whenever they change (a static backend: never)."""
        ...

    async def sync(self) -> None:
        """Learns what runs before the runtime reconciles with it."""
        ...

    async def wait(self, run: str, attempt: int) -> None:
        """Returns when the attempt's runners have ended, were removed, or their node was lost."""
        ...

    def started(self, run: str, attempt: int) -> bool:
        """Whether the attempt's runner was ever started (a restarted scheduler relaunches the others)."""
        ...

    def is_alive(self, run: str, attempt: int) -> bool: ...

    def cancel(self, run: str, attempt: int) -> bool:
        """Asks the runners to stop the command and upload; False when none is alive."""
        ...

    def kill_command(self, run: str, attempt: int) -> None:
        """Makes sure nothing of a lost attempt goes on beside a next one."""
        ...

    def kill_runner(self, run: str, attempt: int) -> None:
        """Stops runners that did not stop when asked."""
        ...

    def final_state(self, run: str, attempt: int) -> LastWord | None:
        """The runner's last word (state.json), where the backend can read it."""
        ...

    def read_log(
        self, run: str, attempt: int, follow: bool, is_live: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[bytes]:
        """The run's training log from the start; with follow, new output until `is_live()` turns false."""
        ...
