"""Time as integer milliseconds since the epoch: exact arithmetic for billing."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_timestamp(ms: int | None) -> Timestamp | None:
    if ms is None:
        return None
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def from_timestamp(ts: Timestamp) -> int:
    return ts.ToMilliseconds()
