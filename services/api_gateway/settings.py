"""Gateway settings, from DLAAS_GATEWAY_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_GATEWAY_", extra="ignore")

    database_url: str = "sqlite:///dlaas-gateway.db"
    scheduler_address: str = "127.0.0.1:50052"
    storage_address: str = "127.0.0.1:50053"
    metering_address: str = "127.0.0.1:50054"
    # Accepted frameworks: name → accepted versions (empty: any). Anything else is refused at submission.
    frameworks: dict[str, list[str]] = Field(default_factory=lambda: {"pytorch": list[str](), "python": list[str]()})
    # Until API keys exist, every caller acts as this account, of this tier.
    default_account: str = "default"
    default_tier: str = "free"
    # Bucket of the platform store where submitted model code is kept.
    code_bucket: str = "dlaas-code"
    max_code_archive_bytes: int = 64 * 1024 * 1024
