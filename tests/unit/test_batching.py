"""Group commit: what callers of GroupWriter see."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from services.common.batching import GroupWriter


async def test_calls_arriving_during_a_write_go_together_in_the_next_batch() -> None:
    batches: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()  # the first batch is slow: everything else arrives meanwhile
        return [item * 10 for item in items]

    writer: GroupWriter[int, int] = GroupWriter(write)
    first = asyncio.create_task(writer.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(writer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == [10, 20, 30, 40, 50]
    assert batches == [[0], [1, 2, 3, 4, 5]]


async def test_an_item_refused_fails_only_its_caller_and_a_failed_write_fails_its_whole_batch() -> None:
    async def write(items: Sequence[int]) -> list[int | BaseException]:
        if 99 in items:
            raise RuntimeError("the database went away")
        return [ValueError(f"{item} is odd") if item % 2 else item for item in items]

    writer: GroupWriter[int, int] = GroupWriter(write)
    answers = await asyncio.gather(*(writer.submit(i) for i in range(4)), return_exceptions=True)
    assert answers[0] == 0 and answers[2] == 2
    assert [str(a) for a in answers[1::2]] == ["1 is odd", "3 is odd"]
    with pytest.raises(RuntimeError, match="went away"):
        await writer.submit(99)
    assert await writer.submit(4) == 4  # the writer goes on after a failed batch


async def test_a_caller_that_gives_up_does_not_stop_the_batch() -> None:
    written: list[int] = []
    release = asyncio.Event()

    async def write(items: Sequence[int]) -> list[int | BaseException]:
        await release.wait()
        written.extend(items)
        return list(items)

    writer: GroupWriter[int, int] = GroupWriter(write)
    impatient = asyncio.create_task(writer.submit(1))
    patient = asyncio.create_task(writer.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == 2
    assert written == [1, 2]  # as a commit already on its way would have been


async def test_a_batch_is_written_outside_every_callers_context() -> None:
    """Not in the context of the caller that happened to start the writer: its trace and log
    bindings are not the batch's."""
    who: contextvars.ContextVar[str | None] = contextvars.ContextVar("who", default=None)
    seen: list[str | None] = []

    async def write(items: Sequence[int]) -> list[int | BaseException]:
        seen.append(who.get())
        return list(items)

    writer: GroupWriter[int, int] = GroupWriter(write)

    async def call(name: str, item: int) -> int:
        who.set(name)
        return await writer.submit(item)

    assert list(await asyncio.gather(call("first", 1), call("second", 2))) == [1, 2]
    assert seen and set(seen) == {None}
