"""Configuration of the storage service, from DLAAS_STORAGE_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_STORAGE_", extra="ignore")

    database_url: str = "sqlite:///dlaas-storage.db"
    # Root of the platform's local object store: <objects_dir>/<account>/<bucket>/<key>.
    objects_dir: str = "objects"
    # The longest grant the broker issues.
    max_grant_ttl_s: int = Field(default=86400, gt=0)

    @field_validator("objects_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Grants hand out paths that other processes open: they must not depend on our working directory.
        return str(Path(value).expanduser().resolve())
