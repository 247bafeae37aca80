"""API keys and submission rate limits: pure rules, no I/O.

A key reads `dlaas_<prefix>_<secret>`: the prefix (8 hex digits) names the key in listings and
logs, the secret (43 URL-safe characters, 256 bits) proves it. Only the SHA-256 of the whole key
is stored: keys are random, so a fast hash is as safe as a slow one and costs microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from dlaas.credentials import KEY_PREFIX, new_api_key

_KEY = re.compile(r"^dlaas_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_ACCOUNT_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_PREFIX = re.compile(r"^dlaas_[0-9a-f]{8}$")


@dataclass(frozen=True)
class NewKey:
    prefix: str  # "dlaas_3f9a1c2b"
    secret: str  # the whole key, shown once
    digest: str  # what is stored


def new_key() -> NewKey:
    prefix, secret = new_api_key()
    return NewKey(prefix, secret, digest(secret))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    """The key's prefix when it is shaped like one of ours, else None (never echo what was sent)."""
    match = _KEY.match(key)
    return KEY_PREFIX + match.group(1) if match else None


def matches(key: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(key), stored_digest)


def is_prefix(value: str) -> bool:
    return bool(_PREFIX.match(value))


def valid_account_id(value: str) -> bool:
    return bool(_ACCOUNT_ID.match(value))


@dataclass
class TokenBucket:
    """`rate` tokens a second up to `burst`; each submission takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> float:
        """Takes a token; returns 0 when one was there, else the seconds until one will be."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate if self.rate > 0 else float("inf")

    def give_back(self) -> None:
        """Returns a token taken for a call that turned out not to count."""
        self.tokens = min(self.burst, self.tokens + 1)
