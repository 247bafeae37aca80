"""Opaque page tokens (AIP-158): an offset the client cannot forge into another query."""

from __future__ import annotations

import base64
import json

from services.common.errors import InvalidArgument


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return default if requested == 0 else min(requested, maximum)


def encode_token(offset: int, query: str) -> str:
    raw = json.dumps({"o": offset, "q": query}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, query: str) -> int:
    """Offset encoded in `token`; the token must come from the same query (filter, parent)."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, token_query = int(data["o"]), str(data["q"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument.field("page_token", "is not a token this service issued") from exc
    if token_query != query or offset < 0:
        raise InvalidArgument.field("page_token", "belongs to another query")
    return offset
