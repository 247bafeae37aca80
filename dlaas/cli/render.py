"""Output for people (tables) and for scripts (-o json)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from dlaas.types.v1 import run_pb2


def to_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


def emit_json(value: Any) -> None:
    if isinstance(value, Message):
        value = to_dict(value)
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None, pad_edge=False, header_style="bold")
    for header in headers:
        t.add_column(header, no_wrap=True)
    for row in rows:
        t.add_row(*[str(cell) for cell in row])
    console = Console()
    if not console.is_terminal:
        console = Console(width=250)  # pipes and files get whole lines
    console.print(t)


def state(value: int) -> str:
    return run_pb2.RunState.Name(value).removeprefix("RUN_STATE_")  # type: ignore[arg-type]


def reason(value: int) -> str:
    return run_pb2.TerminationReason.Name(value).removeprefix("TERMINATION_REASON_")  # type: ignore[arg-type]


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.ToMilliseconds() / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}"
