"""Metering settings, from DLAAS_METERING_* environment variables."""

from __future__ import annotations

import json

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings

# Per GPU-hour, from the epoch on; "*" prices every type not listed. "virtual" (CPU-backed slots)
# costs 0.36 a GPU-hour: 0.0001 a GPU-second.
DEFAULT_PRICES = {
    "virtual": "0.36",
    "t4": "0.35",
    "v100": "2.48",
    "a100": "3.67",
    "h100": "6.98",
    "h200": "8.00",
    "*": "3.00",
}


class MeteringSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_METERING_", extra="ignore")

    database_url: str = "sqlite:///dlaas-metering.db"
    # Seed of the price book, JSON: GPU type → price per GPU-hour, or a list of
    # {"from": "2026-12-01", "per_gpu_hour": "5.50"} (see docs/billing.md). Prices missing from
    # the book are added on start; prices already there are kept.
    prices: str = json.dumps(DEFAULT_PRICES)
    # ISO 4217 code of every price and amount.
    currency: str = "USD"
