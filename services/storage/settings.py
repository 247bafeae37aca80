"""Configuration of the storage service, from DLAAS_STORAGE_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class StorageSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_STORAGE_", extra="ignore")

    database_url: str = "sqlite:///dlaas-storage.db"
    # Root of the platform's local object store: <objects_dir>/<account>/<bucket>/<key>.
    objects_dir: str = "objects"
    # The longest grant the broker issues.
    # Long enough for the longest tier (premium: 7 days) plus the scheduler's margin.
    max_grant_ttl_s: int = Field(default=8 * 86400, gt=0)
    # The longest one set of a grant's S3 credentials (or presigned URLs) lasts; a runner renews its
    # grant (RenewGrant) before then. STS sessions last at most 12 h.
    grant_session_s: int = Field(default=12 * 3600, gt=0, le=12 * 3600)
    # The AES-256 key that seals connection secrets at rest, as base64 or hex. Else read from
    # encryption_key_file; else that file (default: beside objects_dir) is created with a new key.
    encryption_key: SecretStr | None = None
    encryption_key_file: str = ""
    # Keys that sealed secrets before the current one (rotation): JSON list, base64 or hex.
    previous_encryption_keys: list[SecretStr] = Field(default_factory=list)

    def key_file(self) -> Path:
        return Path(self.encryption_key_file or Path(self.objects_dir).parent / "storage-encryption.key").expanduser()

    @field_validator("objects_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        # Grants hand out paths that other processes open: they must not depend on our working directory.
        return str(Path(value).expanduser().resolve())
