"""Structured logs: one JSON object per line, carrying the run id and trace id of the work at hand."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace

_run_id: contextvars.ContextVar[str] = contextvars.ContextVar("dlaas_run_id", default="")
_account: contextvars.ContextVar[str] = contextvars.ContextVar("dlaas_account", default="")


@contextmanager
def bound_run(run: str, account: str = "") -> Iterator[None]:
    """Every log line written inside carries `run` (a run's name or id), and `account` if given."""
    token = _run_id.set(run)
    account_token = _account.set(account) if account else None
    try:
        yield
    finally:
        if account_token is not None:
            _account.reset(account_token)
        _run_id.reset(token)


def bind_run(run: str) -> None:
    """Binds `run` for the rest of the current task (a gRPC call)."""
    _run_id.set(run)


def bind_account(account: str) -> None:
    """Binds the account a call acts for, for the rest of the current task."""
    _account.set(account)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.run = _run_id.get()
        record.account = _account.get()
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": getattr(record, "service", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("account", "run", "trace_id"):
            value = getattr(record, key, "")
            if value:
                entry[key] = value
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(service)s %(run)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
