"""Metering settings, from DLAAS_METERING_* environment variables."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class MeteringSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_METERING_", extra="ignore")

    database_url: str = "sqlite:///dlaas-metering.db"
