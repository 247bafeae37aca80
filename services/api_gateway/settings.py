"""Gateway settings, from DLAAS_GATEWAY_* environment variables."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class RateLimit(BaseModel):
    """Submissions an account may make: `per_second` on average, `burst` at once."""

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


DEFAULT_SUBMISSION_LIMITS = {
    "free": RateLimit(per_second=10, burst=100),
    "standard": RateLimit(per_second=100, burst=1000),
    "premium": RateLimit(per_second=1000, burst=10_000),
}


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_GATEWAY_", extra="ignore")

    database_url: str = "sqlite:///dlaas-gateway.db"
    scheduler_address: str = "127.0.0.1:50052"
    storage_address: str = "127.0.0.1:50053"
    metering_address: str = "127.0.0.1:50054"
    # Accepted frameworks: name → accepted versions (empty: any). Anything else is refused at submission.
    frameworks: dict[str, list[str]] = Field(default_factory=lambda: {"pytorch": list[str](), "python": list[str]()})
    # An admin key the gateway installs on start if it is not there yet (`dlaas up` makes one);
    # with it, `dlaas admin accounts create` makes every other account and key.
    bootstrap_admin_key: SecretStr | None = None
    admin_account: str = "admin"
    # Seconds a verified key is trusted without reading the database again (other replicas
    # learn of a revocation within this time; this one at once).
    auth_cache_s: float = Field(default=5.0, ge=0)
    # Submission rate limits per tier (a token bucket per account and gateway replica).
    submission_limits: dict[str, RateLimit] = Field(default_factory=lambda: dict(DEFAULT_SUBMISSION_LIMITS))
    default_submission_limit: RateLimit = RateLimit(per_second=10, burst=100)
    # Bucket of the platform store where submitted model code is kept.
    code_bucket: str = "dlaas-code"
    # Code archives: compressed size, and the files and bytes inside (checked at submission; the
    # runner checks again when it extracts).
    max_code_archive_bytes: int = 64 * 1024 * 1024
    max_code_archive_files: int = 10_000
