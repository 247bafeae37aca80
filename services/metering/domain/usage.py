"""Usage events and the intervals they open and close: validation and GPU-time arithmetic.

Pure Python: no gRPC, no database. Times are integer milliseconds since the epoch, always the
scheduler's (the event's) time; the only clock read here is the caller's `now_ms` for what an
open interval has accrued so far.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.common.errors import FieldViolation, InvalidArgument
from services.common.names import account_name, parse_account, parse_run

MAX_EVENTS_PER_CALL = 1000
MAX_EVENT_ID_LENGTH = 300
MAX_LABEL_LENGTH = 200  # gpu_type, node
MAX_GPUS = 65_536
# google.protobuf.Timestamp's range ends with 9999-12-31T23:59:59.999Z.
MAX_TIME_MS = 253_402_300_799_999


class EventKind(enum.Enum):
    OPEN = "open"
    CLOSE = "close"


@dataclass(frozen=True)
class EventInput:
    """A usage event as delivered, before validation: a kind or time not given is None."""

    event_id: str
    account: str
    run: str
    attempt: int
    kind: EventKind | None
    time_ms: int | None
    gpus: int = 0
    gpu_type: str = ""
    node: str = ""


@dataclass(frozen=True)
class UsageEvent:
    """A valid usage event. `account` and `run_id` are ids; `run` is the run's resource name."""

    event_id: str
    account: str
    run: str
    run_id: str
    attempt: int
    kind: EventKind
    time_ms: int
    gpus: int
    gpu_type: str
    node: str


@dataclass(frozen=True)
class UsageInterval:
    """The GPU time of one run attempt, from its OPEN event's time to its CLOSE event's time.

    Events may arrive in any order: a CLOSE seen first leaves an interval with an end and no start,
    which bills nothing until its OPEN arrives.
    """

    account: str
    run: str
    run_id: str
    attempt: int
    gpus: int = 0
    gpu_type: str = ""
    node: str = ""
    start_ms: int | None = None
    end_ms: int | None = None

    @property
    def opened(self) -> bool:
        return self.start_ms is not None

    @property
    def accruing(self) -> bool:
        return self.start_ms is not None and self.end_ms is None

    @property
    def record_name(self) -> str:
        return usage_record_name(self.account, self.run_id, self.attempt)

    def gpu_milliseconds(self, now_ms: int) -> int:
        """GPUs * (end - start); up to `now_ms` while accruing. Never negative.

        The repository's total sums the same expression in SQL; keep the two alike.
        """
        if self.start_ms is None:
            return 0
        until = self.end_ms if self.end_ms is not None else now_ms
        return self.gpus * max(0, until - self.start_ms)


def usage_record_name(account: str, run_id: str, attempt: int) -> str:
    return f"{account_name(account)}/usageRecords/{run_id}-a{attempt}"


def apply_event(interval: UsageInterval | None, event: UsageEvent) -> UsageInterval:
    """The interval after `event`; `interval` is None when no event of this attempt came before."""
    if interval is None:
        interval = UsageInterval(account=event.account, run=event.run, run_id=event.run_id, attempt=event.attempt)
    if event.kind is EventKind.OPEN:
        return replace(interval, start_ms=event.time_ms, gpus=event.gpus, gpu_type=event.gpu_type, node=event.node)
    return replace(interval, end_ms=event.time_ms)


def validate_events(events: Sequence[EventInput]) -> list[UsageEvent]:
    """The events, validated; raises InvalidArgument naming every bad field (`events[2].event_time`)."""
    if not events:
        raise InvalidArgument.field("events", "must hold at least one event")
    if len(events) > MAX_EVENTS_PER_CALL:
        raise InvalidArgument.field("events", f"must hold at most {MAX_EVENTS_PER_CALL} events, got {len(events)}")
    valid: list[UsageEvent] = []
    violations: list[FieldViolation] = []
    for index, event in enumerate(events):
        checked, problems = _validate_event(event, f"events[{index}]")
        violations.extend(problems)
        if checked is not None:
            valid.append(checked)
    if violations:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        raise InvalidArgument(f"{first.field}: {first.description}{more}", violations)
    return valid


def _validate_event(event: EventInput, path: str) -> tuple[UsageEvent | None, list[FieldViolation]]:
    violations: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        violations.append(FieldViolation(f"{path}.{field}", description))

    if not event.event_id:
        bad("event_id", "is required")
    elif len(event.event_id) > MAX_EVENT_ID_LENGTH:
        bad("event_id", f"must be at most {MAX_EVENT_ID_LENGTH} characters")

    account: str | None = None
    try:
        account = parse_account(event.account, field=f"{path}.account")
    except InvalidArgument as exc:
        violations.extend(exc.violations)
    run_account, run_id = "", ""
    try:
        run_account, run_id = parse_run(event.run, field=f"{path}.run")
    except InvalidArgument as exc:
        violations.extend(exc.violations)
    else:
        if account is not None and run_account != account:
            bad("run", f"must be a run of {event.account}")

    if event.attempt < 0:
        bad("attempt", "must not be negative")
    if event.kind is None:
        bad("kind", "must be OPEN or CLOSE")
    if event.time_ms is None:
        bad("event_time", "is required")
    elif not 0 <= event.time_ms <= MAX_TIME_MS:
        bad("event_time", "must lie between 1970-01-01 and 9999-12-31")

    if event.gpus < 0:
        bad("gpus", "must not be negative")
    elif event.gpus > MAX_GPUS:
        bad("gpus", f"must be at most {MAX_GPUS}")
    if len(event.gpu_type) > MAX_LABEL_LENGTH:
        bad("gpu_type", f"must be at most {MAX_LABEL_LENGTH} characters")
    if len(event.node) > MAX_LABEL_LENGTH:
        bad("node", f"must be at most {MAX_LABEL_LENGTH} characters")

    if violations or account is None or event.kind is None or event.time_ms is None:
        return None, violations
    return (
        UsageEvent(
            event_id=event.event_id,
            account=account,
            run=event.run,
            run_id=run_id,
            attempt=event.attempt,
            kind=event.kind,
            time_ms=event.time_ms,
            gpus=event.gpus,
            gpu_type=event.gpu_type,
            node=event.node,
        ),
        violations,
    )


@dataclass(frozen=True)
class UsageQuery:
    """Which records a listing asks for: an account's, optionally one run's."""

    account: str
    run: str | None

    @property
    def token_key(self) -> str:
        """What a page token is bound to: a token of another query is refused."""
        return f"{account_name(self.account)}|{self.run or ''}"


def parse_usage_query(parent: str, run: str) -> UsageQuery:
    account = parse_account(parent, field="parent")
    if not run:
        return UsageQuery(account, None)
    run_account, _ = parse_run(run, field="run")
    if run_account != account:
        raise InvalidArgument.field("run", f"must be a run of {parent}")
    return UsageQuery(account, run)
