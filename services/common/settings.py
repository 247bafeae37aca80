"""The one settings pattern: each service subclasses ServiceSettings with its own env prefix."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service reads from its environment (DLAAS_<SERVICE>_<FIELD>)."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    # 0 picks a free port (tests); `dlaas up` assigns fixed ones.
    port: int = 0
    database_url: str = "sqlite:///dlaas.db"
    # Migrate the database to the newest schema on start (else: `dlaas admin migrate`).
    migrate_on_start: bool = True
    # Prometheus endpoint; None disables it, 0 picks a free port.
    metrics_port: int | None = None
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    trace_exporter: Literal["none", "console"] = "none"
    shutdown_grace_s: float = 5.0
