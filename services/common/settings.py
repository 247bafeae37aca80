"""The one settings pattern: each service subclasses ServiceSettings with its own env prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service reads from its environment (DLAAS_<SERVICE>_<FIELD>)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

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
    # The credential every call between our services carries, shared by all of them (one
    # variable, DLAAS_SERVICE_TOKEN, for every service). Internal services refuse to start
    # without it and refuse calls that lack it; `dlaas up` makes one per platform.
    service_token: SecretStr | None = Field(default=None, validation_alias="DLAAS_SERVICE_TOKEN")
    # Mutual TLS between the services (deploy/ sets them): this service's certificate and key,
    # and the CA that signed every service's certificate; all three or none. Internal services
    # then accept only clients with a certificate of that CA (and still the service token).
    tls_cert_file: str = Field(default="", validation_alias="DLAAS_TLS_CERT_FILE")
    tls_key_file: str = Field(default="", validation_alias="DLAAS_TLS_KEY_FILE")
    tls_ca_file: str = Field(default="", validation_alias="DLAAS_TLS_CA_FILE")
    # With mutual TLS: a second port, plaintext, for gRPC health probes (Kubernetes' probes
    # speak no TLS) and for runners' callbacks (runners have no certificate).
    plain_port: int | None = None

    def credentials(self) -> ServiceCredentials:
        files = (self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        if any(files) and not all(files):
            raise ValueError("set DLAAS_TLS_CERT_FILE, DLAAS_TLS_KEY_FILE and DLAAS_TLS_CA_FILE together, or none")
        tls = TlsFiles(*files) if all(files) else None
        return ServiceCredentials(self.service_token, tls)


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str

    def read(self) -> tuple[bytes, bytes, bytes]:
        with open(self.cert, "rb") as c, open(self.key, "rb") as k, open(self.ca, "rb") as a:
            return c.read(), k.read(), a.read()


@dataclass(frozen=True)
class ServiceCredentials:
    """What a service shows when it calls another: the service token and, with mTLS, its certificate."""

    token: SecretStr | None
    tls: TlsFiles | None = None
