"""Rating as pure domain code: periods, the price book, splits, rounding, invoices, allowances."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.metering.domain import rating
from services.metering.domain.rating import Grouping, Period, Price, PriceBook
from services.metering.domain.usage import UsageInterval

HOUR = 3_600_000
NOV = Period(2026, 11)
DEC_1 = calendar.timegm((2026, 12, 1, 0, 0, 0)) * 1000
NOV_27 = calendar.timegm((2026, 11, 27, 0, 0, 0)) * 1000


def interval(
    start: int | None, end: int | None, *, gpus: int = 1, run: str = "r1", attempt: int = 1, gpu_type: str = "h100"
) -> UsageInterval:
    return UsageInterval(
        account="acme",
        run=f"accounts/acme/runs/{run}",
        run_id=run,
        attempt=attempt,
        gpus=gpus,
        gpu_type=gpu_type,
        node="n1",
        start_ms=start,
        end_ms=end,
    )


def book(*prices: Price) -> PriceBook:
    return PriceBook(prices or (Price("h100", 0, 3_600_000), Price("*", 0, 1_000_000)), "USD")


def test_periods_are_utc_months() -> None:
    assert NOV.start_ms == calendar.timegm((2026, 11, 1, 0, 0, 0)) * 1000
    assert NOV.end_ms == DEC_1
    assert Period(2026, 12).end_ms == calendar.timegm((2027, 1, 1, 0, 0, 0)) * 1000
    assert Period.containing(DEC_1 - 1) == NOV
    assert Period.containing(DEC_1) == Period(2026, 12)
    assert rating.parse_period("2026-11", 0) == NOV
    assert rating.parse_period("", DEC_1 - 1) == NOV
    for bad in ("2026-13", "2026-1", "26-11", "2026/11", "2026-00", "november"):
        with pytest.raises(InvalidArgument) as caught:
            rating.parse_period(bad, 0)
        assert caught.value.violations[0].field == "period"


def test_rounding_is_half_up_once_per_line() -> None:
    assert rating.round_half_up(5, 10) == 1
    assert rating.round_half_up(4, 10) == 0
    assert rating.round_half_up(15, 10) == 2
    assert rating.round_half_up(0, 10) == 0
    # 1 GPU-ms at 1.800000 per GPU-hour is 0.5 micro-unit: rounds up to 1.
    assert rating.amount_micros(1 * 1_800_000) == 1
    assert rating.amount_micros(1 * 1_799_999) == 0
    # Three pieces of 0.4 micro-units each: 1.2 rounded once is 1, not 0 + 0 + 0.
    line = rating.invoice(
        "acme",
        [interval(NOV_27 + 10 * a, NOV_27 + 10 * a + 1, attempt=a) for a in (1, 2, 3)],
        NOV,
        book(Price("h100", 0, 1_440_000)),
        now_ms=DEC_1 + 1,
    ).lines
    assert [(item.attempt_count, item.gpu_milliseconds, item.amount_micros) for item in line] == [(3, 3, 1)]


def test_an_interval_across_the_month_end_is_split_at_midnight_utc() -> None:
    crossing = interval(DEC_1 - HOUR, DEC_1 + 2 * HOUR, gpus=2)
    nov = rating.invoice("acme", [crossing], NOV, book(), now_ms=DEC_1 + 10 * HOUR)
    dec = rating.invoice("acme", [crossing], Period(2026, 12), book(), now_ms=DEC_1 + 10 * HOUR)
    assert [line.gpu_milliseconds for line in nov.lines] == [2 * HOUR]
    assert [line.gpu_milliseconds for line in dec.lines] == [4 * HOUR]
    assert nov.total_amount_micros == 2 * 3_600_000 and dec.total_amount_micros == 4 * 3_600_000
    assert nov.final and not dec.final  # December is not over yet


def test_a_price_change_mid_interval_rates_each_part_at_its_price() -> None:
    change = NOV_27 + HOUR
    prices = book(Price("h100", 0, 2_000_000), Price("h100", change, 5_000_000))
    [line] = rating.invoice("acme", [interval(NOV_27, NOV_27 + 3 * HOUR)], NOV, prices, now_ms=DEC_1).lines
    assert line.gpu_milliseconds == 3 * HOUR
    assert line.amount_micros == 1 * 2_000_000 + 2 * 5_000_000
    assert line.unit_price_micros == 0  # it changed within the line
    [before] = rating.invoice("acme", [interval(NOV_27, change)], NOV, prices, now_ms=DEC_1).lines
    assert before.unit_price_micros == 2_000_000


def test_unknown_gpu_types_take_the_default_and_unpriced_ones_cost_nothing() -> None:
    prices = book(Price("h100", 0, 3_600_000), Price("*", 0, 1_000_000))
    assert prices.price_at("H100", NOV_27) == 3_600_000
    assert prices.price_at("a10g", NOV_27) == 1_000_000
    no_default = book(Price("h100", NOV_27, 3_600_000))
    assert no_default.price_at("a10g", NOV_27) == 0
    assert no_default.price_at("h100", NOV_27 - 1) == 0


def test_invoice_has_a_line_per_run_with_its_attempts_summed() -> None:
    intervals = [
        interval(NOV_27, NOV_27 + 1000, run="r1", attempt=1),
        interval(NOV_27 + 5000, NOV_27 + 7000, run="r1", attempt=2),
        interval(NOV_27, NOV_27 + 3000, run="r2", gpus=4, gpu_type="virtual"),
        interval(None, NOV_27 + 3000, run="r3"),  # its OPEN has not arrived: nothing billed yet
    ]
    bill = rating.invoice("acme", intervals, NOV, book(), now_ms=DEC_1)
    assert [(line.run, line.gpu_type, line.attempt_count, line.gpu_milliseconds) for line in bill.lines] == [
        ("accounts/acme/runs/r1", "h100", 2, 3000),
        ("accounts/acme/runs/r2", "virtual", 1, 12_000),
    ]
    assert bill.total_gpu_milliseconds == 15_000
    assert bill.total_amount_micros == sum(line.amount_micros for line in bill.lines) == 3000 + 3333
    assert bill.final


def test_an_open_interval_accrues_up_to_now_and_keeps_the_invoice_a_draft() -> None:
    now = NOV_27 + 10_000
    bill = rating.invoice("acme", [interval(NOV_27, None, gpus=3)], NOV, book(), now_ms=now)
    [line] = bill.lines
    assert (line.gpu_milliseconds, line.accruing) == (30_000, True)
    assert not bill.final
    # Still open after the month ended: November holds its part up to midnight, and stays a draft.
    late = rating.invoice("acme", [interval(DEC_1 - 1000, None)], NOV, book(), now_ms=DEC_1 + 5000)
    assert [line.gpu_milliseconds for line in late.lines] == [1000]
    assert not late.final


def test_summaries_by_day_split_at_midnight_and_by_gpu_type() -> None:
    day = 86_400_000
    intervals = [
        interval(NOV_27 - HOUR, NOV_27 + 2 * HOUR, run="r1"),
        interval(NOV_27 + day, NOV_27 + day + 1000, run="r2", gpu_type="virtual", gpus=2),
    ]
    by_day = rating.summarize(intervals, NOV, Grouping.DAY, book(), now_ms=DEC_1)
    assert [(t.key, t.gpu_milliseconds) for t in by_day] == [
        ("2026-11-26", HOUR),
        ("2026-11-27", 2 * HOUR),
        ("2026-11-28", 2000),
    ]
    by_type = rating.summarize(intervals, NOV, Grouping.GPU_TYPE, book(), now_ms=DEC_1)
    assert [(t.key, t.gpu_milliseconds, t.attempt_count) for t in by_type] == [
        ("h100", 3 * HOUR, 1),
        ("virtual", 2000, 1),
    ]
    by_run = rating.summarize(intervals, NOV, Grouping.RUN, book(), now_ms=DEC_1)
    assert sum(t.gpu_milliseconds for t in by_run) == sum(t.gpu_milliseconds for t in by_day)


def test_monthly_usage_counts_closed_and_accruing_within_the_month() -> None:
    now = NOV_27 + 10_000
    used = rating.monthly_usage(
        [
            interval(NOV.start_ms - 5000, NOV.start_ms + 1000, gpus=2),  # only its November part
            interval(NOV_27, NOV_27 + 4000),
            interval(NOV_27 + 2000, None, gpus=4),
            interval(None, NOV_27 + 1),
        ],
        NOV,
        now,
    )
    assert used.closed_gpu_milliseconds == 2 * 1000 + 4000
    assert used.accruing_gpu_milliseconds == 4 * 8000
    assert used.accruing_gpus == 4
    assert used.gpu_milliseconds == 6000 + 32_000


def test_prices_parse_from_settings_json_exactly() -> None:
    prices = rating.parse_prices(
        '{"H100": "6.98", "virtual": 0.36, "a100": [{"per_gpu_hour": "3.67"},'
        ' {"from": "2026-12-01", "per_gpu_hour": "2.999999"}]}'
    )
    assert sorted(prices) == [
        Price("a100", 0, 3_670_000),
        Price("a100", DEC_1, 2_999_999),
        Price("h100", 0, 6_980_000),
        Price("virtual", 0, 360_000),
    ]
    for bad, field in (
        ('{"h100": "1.0000001"}', "prices.h100[0].per_gpu_hour"),
        ('{"h100": "-1"}', "prices.h100[0].per_gpu_hour"),
        ('{"h100": "cheap"}', "prices.h100[0].per_gpu_hour"),
        ('{"h100": [{"from": "soon", "per_gpu_hour": 1}]}', "prices.h100[0].from"),
        ('{"h100": [{"from": "2026-12-01"}]}', "prices.h100[0]"),
        ("[1, 2]", "prices"),
        ("{", "prices"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            rating.parse_prices(bad)
        assert caught.value.violations[0].field == field


@given(
    start=st.integers(NOV.start_ms - 40 * 86_400_000, NOV.end_ms + 40 * 86_400_000),
    length=st.integers(0, 70 * 86_400_000),
    gpus=st.integers(0, 64),
    change=st.integers(NOV.start_ms - 86_400_000, NOV.end_ms + 86_400_000),
)
def test_pieces_add_up_to_the_whole_interval(start: int, length: int, gpus: int, change: int) -> None:
    """Whatever the splits (months, days, price changes), the months' parts sum to gpus × length."""
    prices = book(Price("h100", 0, 1_000_000), Price("h100", change, 2_000_000))
    whole = interval(start, start + length, gpus=gpus)
    months, total = Period.containing(start), 0
    while months.start_ms < start + length or months.start_ms <= start:
        for grouping in (Grouping.RUN, Grouping.DAY):
            parts = rating.summarize([whole], months, grouping, prices, now_ms=0)
            if grouping is Grouping.RUN:
                total += sum(t.gpu_milliseconds for t in parts)
            exact = sum(t.price_ms_products for t in parts)
            cut = rating.pieces([whole], months.start_ms, months.end_ms, prices, 0)
            assert exact == sum(p.price_ms_product for p in cut)
        months = months.next()
    assert total == gpus * length
