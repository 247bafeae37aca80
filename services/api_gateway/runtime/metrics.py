"""Metrics: taken from the scheduler's relay, stored per run with step and time, followed live.

Runners send their points to the scheduler (authenticated by the run token, see
services/scheduler/runtime/metrics_relay.py); one loop here follows the relay and stores each
batch. A point is stored once, keyed by (run, attempt, sequence), so a relay read twice after a
reconnect or a restart changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from dlaas.scheduler.v1 import scheduler_pb2
from dlaas.types.v1 import run_pb2
from services.api_gateway.adapters.experiments_db import MetricRepository, StoredPoint
from services.api_gateway.adapters.peers import Peers
from services.common import pagination

log = logging.getLogger(__name__)

# After a run ended, how long a follower waits for points still on their way through the relay.
_STRAGGLER_S = 1.0


class Metrics:
    def __init__(self, repo: MetricRepository, peers: Peers):
        self.repo = repo
        self.peers = peers
        self._arrived: dict[str, asyncio.Event] = {}
        self._followers: dict[str, int] = defaultdict(int)
        self.on_points: list[Callable[[str], None]] = []

    # ---- intake --------------------------------------------------------------------------

    async def ingest_loop(self) -> None:
        """Follows the scheduler's relay for as long as the gateway runs, reconnecting as needed."""
        relay_id, position = "", 0
        while True:
            try:
                stream = self.peers.scheduler.StreamRelayedMetrics(
                    scheduler_pb2.StreamRelayedMetricsRequest(relay_id=relay_id, after_position=position)
                )
                async for batch in stream:
                    await self.store(batch.run, batch.attempt, batch.points)
                    relay_id, position = batch.relay_id, batch.position
            except grpc.aio.AioRpcError as exc:
                log.debug("metrics relay: %s; reconnecting", exc.code().name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storing relayed metrics failed; reconnecting")
            await asyncio.sleep(0.5)

    async def store(self, run: str, attempt: int, points: Sequence[run_pb2.MetricPoint]) -> None:
        await self.repo.add(
            run, attempt, [(p.sequence, p.name, p.step, p.value, p.time.ToMilliseconds()) for p in points]
        )
        event = self._arrived.get(run)
        if event is not None:
            event.set()
        for listener in self.on_points:
            listener(run)

    # ---- reading -------------------------------------------------------------------------

    async def list_points(
        self, run: str, metrics: Sequence[str], page_size: int, page_token: str
    ) -> tuple[list[StoredPoint], str]:
        size = pagination.page_size(page_size, default=10_000, maximum=10_000)
        after = _decode_after(pagination.decode_token(page_token, run)) if page_token else (0, 0)
        points = await self.repo.points(run, after=after, metrics=metrics, limit=size + 1)
        token = ""
        if len(points) > size:
            points = points[:size]
            token = pagination.encode_token(_encode_after(points[-1]), run)
        return points, token

    async def follow(
        self, run: str, follow: bool, is_terminal: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[list[StoredPoint]]:
        """The run's points, then (with follow) new ones as they arrive, until the run has ended."""
        event = self._arrived.setdefault(run, asyncio.Event())
        self._followers[run] += 1
        after = (0, 0)
        try:
            ended_at: float | None = None
            while True:
                event.clear()
                points = await self.repo.points(run, after=after)
                if points:
                    after = (points[-1].attempt, points[-1].sequence)
                    yield points
                    continue
                if not follow:
                    return
                loop = asyncio.get_running_loop()
                if ended_at is None and await is_terminal():
                    ended_at = loop.time()
                if ended_at is not None and loop.time() - ended_at >= _STRAGGLER_S:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 0.25 if ended_at is not None else 1.0)
        finally:
            self._followers[run] -= 1
            if not self._followers[run]:
                self._followers.pop(run, None)
                self._arrived.pop(run, None)


def _encode_after(point: StoredPoint) -> int:
    return point.attempt * (1 << 40) + point.sequence


def _decode_after(value: int) -> tuple[int, int]:
    return value >> 40, value & ((1 << 40) - 1)
