"""Who is calling. Until API keys land (accounts issue), every caller is the configured account.

The seam is here so that servicers already act as "the caller's account" everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class Caller:
    account: str
    tier: str


def authenticate(context: grpc.aio.ServicerContext[Any, Any], default: Caller) -> Caller:
    return default
