"""Group commit: writes that arrive while one batch is being written go together in the next.

A service whose callers each write a row pays for a transaction per call: on SQLite one
connection serves them one after another, and SQLAlchemy's per-statement cost is paid per row.
`GroupWriter` keeps at most one batch in flight; every call that arrives meanwhile waits and is
written with the others in one transaction. With one caller it adds nothing (a batch of one
starts at once); under load batches grow by themselves, no timer involved.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

# The most items written together, and the most runs one SubmitRuns call carries.
MAX_BATCH = 500

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupWriter(Generic[Item, Result]):
    """Calls `write(items)` with every item submitted while the previous batch was written.

    `write` answers one outcome per item, in order: a result, or an exception for that item's caller
    alone (a refusal of one row). An exception raised by `write` itself fails the whole batch.
    """

    def __init__(
        self, write: Callable[[Sequence[Item]], Awaitable[Sequence[Result | BaseException]]], max_batch: int = MAX_BATCH
    ):
        self._write = write
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future = self._enqueue(item)
        # The batch is written whether or not this caller still waits (a cancelled call's row may land,
        # as it could before a commit): shield it, so one caller's cancellation fails nobody else's write.
        return await asyncio.shield(future)

    async def submit_many(self, items: Sequence[Item]) -> list[Result | BaseException]:
        """Each item's outcome: its result, or the exception `submit` would raise for it. The items
        go in the batches that calls of `submit` would put them in, without a task or a wait each."""
        futures = [self._enqueue(item) for item in items]
        if futures:
            # Written whether or not this caller still waits, as in `submit` (wait cancels nothing).
            await asyncio.wait(futures)
        return [future.exception() or future.result() for future in futures]

    def _enqueue(self, item: Item) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # a caller that gave up leaves no "never retrieved" warning
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            # A batch is nobody's: written outside any caller's context (its trace, its log bindings).
            self._writer = asyncio.create_task(self._drain(), context=contextvars.Context())
        return future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                outcomes = await self._write([item for item, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} got {len(outcomes)} outcomes")
            except BaseException as exc:  # the whole batch fails; its callers see why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    self._fail_pending(exc)
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, []
        for _, future in pending:
            if not future.done():
                future.set_exception(exc)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
