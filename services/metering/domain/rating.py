"""Rating: GPU time × the price book → charges, summaries and monthly invoices.

Pure Python, exact integer arithmetic. Money is in micro-units (millionths of the currency
unit); prices are micro-units per GPU-hour; time is integer milliseconds (UTC).

- An interval is cut at UTC month boundaries (a month's invoice holds only the part inside it),
  at price changes (each piece at the price in effect during it) and, for a summary by day, at
  UTC midnights.
- Each piece contributes `gpus × milliseconds × price` exactly; a line (or group) sums those
  products and is divided by 3,600,000 (ms per hour) once, rounded half up to the micro-unit.
  Totals are sums of rounded lines, so an invoice's lines add up to its total.
- An interval still open counts up to `now` (never past the window's end) and is `accruing`.
"""

from __future__ import annotations

import calendar
import enum
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from itertools import pairwise

from services.common.errors import InvalidArgument
from services.metering.domain.usage import UsageInterval

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
MICROS = 1_000_000
ANY_GPU_TYPE = "*"

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


def round_half_up(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, for numerator ≥ 0 and denominator > 0."""
    return (2 * numerator + denominator) // (2 * denominator)


def amount_micros(price_ms_products: int) -> int:
    """Σ gpus × ms × micros-per-GPU-hour → micro-units, rounded half up once."""
    return round_half_up(price_ms_products, MS_PER_HOUR)


# ---- periods -------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Period:
    """A UTC calendar month."""

    year: int
    month: int

    @property
    def name(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start_ms(self) -> int:
        return calendar.timegm((self.year, self.month, 1, 0, 0, 0)) * 1000

    @property
    def end_ms(self) -> int:
        return self.next().start_ms

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    @staticmethod
    def containing(time_ms: int) -> Period:
        moment = datetime.fromtimestamp(time_ms // 1000, UTC)
        return Period(moment.year, moment.month)


def parse_period(text: str, now_ms: int, field_name: str = "period") -> Period:
    """ "YYYY-MM" as a Period; empty means the month of `now_ms`."""
    if not text:
        return Period.containing(now_ms)
    match = _PERIOD.match(text)
    if not match or not 1 <= int(match.group(2)) <= 12 or not 1970 <= int(match.group(1)) <= 9999:
        raise InvalidArgument.field(field_name, f"must be a month like 2026-11, got {text[:40]!r}")
    return Period(int(match.group(1)), int(match.group(2)))


def day_of(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms // 1000, UTC).strftime("%Y-%m-%d")


# ---- the price book ------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Price:
    """From `effective_ms` on (until the next price of the same GPU type), a GPU-hour costs this."""

    gpu_type: str
    effective_ms: int
    micros_per_gpu_hour: int


@dataclass(frozen=True)
class PricePiece:
    start_ms: int
    end_ms: int
    micros_per_gpu_hour: int


class PriceBook:
    """Prices per GPU type over time. A type without prices of its own takes the "*" prices;
    before its first effective date (or with no prices at all) a GPU-hour costs 0."""

    def __init__(self, prices: Iterable[Price], currency: str):
        self.currency = currency
        self._by_type: dict[str, list[Price]] = {}
        for price in sorted(prices):
            self._by_type.setdefault(price.gpu_type, []).append(price)

    def _prices_of(self, gpu_type: str) -> list[Price]:
        return self._by_type.get(gpu_type.lower()) or self._by_type.get(ANY_GPU_TYPE) or []

    def pieces(self, gpu_type: str, start_ms: int, end_ms: int) -> list[PricePiece]:
        """[start, end) cut where the price of `gpu_type` changes, each piece with its price."""
        if end_ms <= start_ms:
            return []
        cuts = [start_ms]
        cuts += [p.effective_ms for p in self._prices_of(gpu_type) if start_ms < p.effective_ms < end_ms]
        cuts.append(end_ms)
        return [PricePiece(a, b, self.price_at(gpu_type, a)) for a, b in pairwise(cuts)]

    def price_at(self, gpu_type: str, time_ms: int) -> int:
        current = 0
        for price in self._prices_of(gpu_type):
            if price.effective_ms > time_ms:
                break
            current = price.micros_per_gpu_hour
        return current


def to_micros(value: object, field_name: str) -> int:
    """A decimal price ("2.50", 2.5, 3) as an exact count of micro-units."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise InvalidArgument.field(field_name, f"must be a decimal number, got {value!r}") from exc
    micros = amount * MICROS
    if not amount.is_finite() or amount < 0 or micros != micros.to_integral_value():
        raise InvalidArgument.field(field_name, f"must be ≥ 0 with at most 6 decimals, got {value!r}")
    return int(micros)


def _effective_ms(value: object, field_name: str) -> int:
    text = str(value)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidArgument.field(field_name, f"must be an ISO date like 2026-12-01, got {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_prices(text: str) -> list[Price]:
    """The price book's seed, as JSON: GPU type → price per GPU-hour, or a list of prices with dates.

    `{"h100": "6.98", "virtual": "0.36", "*": "3.00"}` prices from the epoch on;
    `{"h100": [{"per_gpu_hour": "6.98"}, {"from": "2026-12-01", "per_gpu_hour": "5.50"}]}`
    changes the price on 2026-12-01 00:00 UTC ("from" omitted: the epoch).
    """
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise InvalidArgument.field("prices", f"must be JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument.field("prices", "must be a JSON object of GPU type → price")
    prices: list[Price] = []
    for gpu_type, entry in data.items():
        entries = entry if isinstance(entry, list) else [{"per_gpu_hour": entry}]
        for index, item in enumerate(entries):
            path = f"prices.{gpu_type}[{index}]"
            if not isinstance(item, dict) or "per_gpu_hour" not in item:
                raise InvalidArgument.field(path, 'must be {"from": DATE, "per_gpu_hour": PRICE}')
            effective = _effective_ms(item["from"], f"{path}.from") if "from" in item else 0
            micros = to_micros(item["per_gpu_hour"], f"{path}.per_gpu_hour")
            prices.append(Price(str(gpu_type).lower(), effective, micros))
    return prices


# ---- pieces of intervals -------------------------------------------------------------------


class Grouping(enum.Enum):
    RUN = "run"
    GPU_TYPE = "gpu_type"
    DAY = "day"


@dataclass(frozen=True)
class Piece:
    """Part of one attempt's interval inside a window, at one price (and within one day, if asked)."""

    interval: UsageInterval
    start_ms: int
    end_ms: int
    micros_per_gpu_hour: int
    accruing: bool

    @property
    def gpu_milliseconds(self) -> int:
        return self.interval.gpus * (self.end_ms - self.start_ms)

    @property
    def price_ms_product(self) -> int:
        return self.gpu_milliseconds * self.micros_per_gpu_hour


def pieces(
    intervals: Iterable[UsageInterval],
    window_start_ms: int,
    window_end_ms: int,
    book: PriceBook,
    now_ms: int,
    *,
    by_day: bool = False,
) -> Iterator[Piece]:
    """Every opened interval's part inside [window_start, window_end), cut at price changes."""
    for interval in intervals:
        if interval.start_ms is None or interval.gpus == 0:
            continue  # its OPEN has not arrived (nothing to bill yet), or it holds no GPU (nothing to bill)
        until = interval.end_ms if interval.end_ms is not None else now_ms
        start, end = max(interval.start_ms, window_start_ms), min(until, window_end_ms)
        if end <= start:
            continue
        cuts = [start]
        if by_day:
            cuts += range((start // MS_PER_DAY + 1) * MS_PER_DAY, end, MS_PER_DAY)
        cuts.append(end)
        for a, b in pairwise(cuts):
            for price in book.pieces(interval.gpu_type, a, b):
                yield Piece(interval, price.start_ms, price.end_ms, price.micros_per_gpu_hour, interval.accruing)


# ---- summaries and invoices ----------------------------------------------------------------


@dataclass
class Tally:
    """GPU time and charge summed over pieces; the charge is rounded once, at the end."""

    key: str
    gpu_milliseconds: int = 0
    price_ms_products: int = 0
    accruing: bool = False
    attempts: set[tuple[str, int]] = field(default_factory=set)
    prices: set[int] = field(default_factory=set)

    def add(self, piece: Piece) -> None:
        self.gpu_milliseconds += piece.gpu_milliseconds
        self.price_ms_products += piece.price_ms_product
        self.accruing = self.accruing or piece.accruing
        self.attempts.add((piece.interval.run, piece.interval.attempt))
        self.prices.add(piece.micros_per_gpu_hour)

    @property
    def amount_micros(self) -> int:
        return amount_micros(self.price_ms_products)

    @property
    def attempt_count(self) -> int:
        return len(self.attempts)

    @property
    def unit_price_micros(self) -> int:
        """The price per GPU-hour when one price applied throughout; 0 when it changed."""
        return next(iter(self.prices)) if len(self.prices) == 1 else 0


def _key(piece: Piece, grouping: Grouping) -> str:
    if grouping is Grouping.RUN:
        return piece.interval.run
    if grouping is Grouping.GPU_TYPE:
        return piece.interval.gpu_type
    return day_of(piece.start_ms)


def summarize(
    intervals: Iterable[UsageInterval], period: Period, grouping: Grouping, book: PriceBook, now_ms: int
) -> list[Tally]:
    """The month's usage grouped by run, GPU type or UTC day, in key order."""
    tallies: dict[str, Tally] = {}
    by_day = grouping is Grouping.DAY
    for piece in pieces(intervals, period.start_ms, period.end_ms, book, now_ms, by_day=by_day):
        key = _key(piece, grouping)
        tallies.setdefault(key, Tally(key)).add(piece)
    return [tallies[key] for key in sorted(tallies)]


@dataclass(frozen=True)
class InvoiceLine:
    run: str
    gpu_type: str
    attempt_count: int
    gpu_milliseconds: int
    unit_price_micros: int
    amount_micros: int
    accruing: bool


@dataclass(frozen=True)
class Invoice:
    account: str
    period: Period
    lines: list[InvoiceLine]
    currency: str
    final: bool

    @property
    def total_gpu_milliseconds(self) -> int:
        return sum(line.gpu_milliseconds for line in self.lines)

    @property
    def total_amount_micros(self) -> int:
        return sum(line.amount_micros for line in self.lines)


def invoice(account: str, intervals: Sequence[UsageInterval], period: Period, book: PriceBook, now_ms: int) -> Invoice:
    """A line per run and GPU type (its attempts summed), rounded per line; final once the month is over
    and nothing in it accrues."""
    tallies: dict[tuple[str, str], Tally] = {}
    for piece in pieces(intervals, period.start_ms, period.end_ms, book, now_ms):
        key = (piece.interval.run, piece.interval.gpu_type)
        tallies.setdefault(key, Tally(piece.interval.run)).add(piece)
    lines = [
        InvoiceLine(
            run=run,
            gpu_type=gpu_type,
            attempt_count=tally.attempt_count,
            gpu_milliseconds=tally.gpu_milliseconds,
            unit_price_micros=tally.unit_price_micros,
            amount_micros=tally.amount_micros,
            accruing=tally.accruing,
        )
        for (run, gpu_type), tally in sorted(tallies.items())
    ]
    accruing = any(i.accruing and i.start_ms is not None and i.start_ms < period.end_ms for i in intervals)
    return Invoice(account, period, lines, book.currency, final=now_ms >= period.end_ms and not accruing)


@dataclass(frozen=True)
class MonthlyUsage:
    closed_gpu_milliseconds: int
    accruing_gpu_milliseconds: int
    accruing_gpus: int

    @property
    def gpu_milliseconds(self) -> int:
        return self.closed_gpu_milliseconds + self.accruing_gpu_milliseconds


def monthly_usage(intervals: Iterable[UsageInterval], period: Period, now_ms: int) -> MonthlyUsage:
    """An account's GPU time inside `period`, closed and accruing (up to `now_ms`), for allowances."""
    closed = accruing = accruing_gpus = 0
    for interval in intervals:
        if interval.start_ms is None:
            continue
        until = interval.end_ms if interval.end_ms is not None else now_ms
        start, end = max(interval.start_ms, period.start_ms), min(until, period.end_ms)
        used = interval.gpus * max(0, end - start)
        if interval.accruing:
            accruing += used
            accruing_gpus += interval.gpus
        else:
            closed += used
    return MonthlyUsage(closed, accruing, accruing_gpus)
