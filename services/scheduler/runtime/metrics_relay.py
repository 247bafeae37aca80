"""Metric points from runners, relayed to the gateway (which owns and stores them).

Runners already hold an authenticated path to the scheduler (their run token), so they send
their points here; the gateway follows the relay with StreamRelayedMetrics and stores them,
idempotently on (run, attempt, sequence). The relay is a bounded buffer in memory: a gateway
that was down catches up from where it was, within the buffer; a scheduler restart starts a new
relay (new id), and points sent but not yet read by then are lost (runners send within a second).
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

from dlaas.types.v1 import run_pb2

# Batches kept for a gateway that reconnects (each at most 500 points, checked by the servicer):
# at most ≈ 2 million points, ≈ 150 MB, whatever the runs send.
DEFAULT_CAPACITY = 4_000


@dataclass(frozen=True)
class RelayedBatch:
    position: int
    run: str
    attempt: int
    points: tuple[run_pb2.MetricPoint, ...]


class MetricsRelay:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.relay_id = uuid.uuid4().hex
        self._batches: collections.deque[RelayedBatch] = collections.deque(maxlen=capacity)
        self._position = 0
        self._arrived = asyncio.Condition()

    async def publish(self, run: str, attempt: int, points: list[run_pb2.MetricPoint]) -> None:
        if not points:
            return
        async with self._arrived:
            self._position += 1
            self._batches.append(RelayedBatch(self._position, run, attempt, tuple(points)))
            self._arrived.notify_all()

    def _has_after(self, position: int) -> bool:
        return bool(self._batches) and self._batches[-1].position > position

    def _after(self, position: int) -> list[RelayedBatch]:
        if not self._batches or self._batches[-1].position <= position:
            return []
        first = self._batches[0].position
        start = max(0, position - first + 1)
        return [self._batches[i] for i in range(start, len(self._batches))]

    async def follow(self, relay_id: str, after: int) -> AsyncIterator[RelayedBatch]:
        """Every batch after `after` (from the start when `relay_id` is another relay's), then new
        ones as they arrive, until the caller stops reading."""
        position = after if relay_id == self.relay_id else 0
        while True:
            async with self._arrived:
                await self._arrived.wait_for(partial(self._has_after, position))
                batches = self._after(position)
            for batch in batches:
                yield batch
                position = batch.position
