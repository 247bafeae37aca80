"""Scheduler settings, from DLAAS_SCHEDULER_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class Tier(BaseModel):
    """What an account of a tier may use. Tiers are configuration (DLAAS_SCHEDULER_TIERS, JSON)."""

    max_gpus: int = Field(ge=0, description="GPUs the account's running runs may hold at once")
    max_queued_runs: int = Field(default=1000, ge=0, description="runs it may have waiting at once")
    weight: float = Field(default=1.0, gt=0, description="fair-share weight across accounts")
    allowed_gpu_types: list[str] = Field(default_factory=list, description="GPU types its runs may use; empty: any")
    max_runtime_s: int = Field(default=86_400, gt=0)
    # GPU-hours its runs may use per calendar month (UTC); None: no allowance, pay as you go.
    monthly_gpu_hours: float | None = Field(default=None, ge=0)


DEFAULT_TIERS = {
    "free": Tier(max_gpus=1, max_queued_runs=100, weight=1.0, max_runtime_s=4 * 3600, monthly_gpu_hours=50),
    "standard": Tier(max_gpus=8, max_queued_runs=1000, weight=2.0),
    "premium": Tier(max_gpus=64, max_queued_runs=10_000, weight=4.0, max_runtime_s=7 * 86_400),
}


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DLAAS_SCHEDULER_", extra="ignore")

    database_url: str = "sqlite:///dlaas-scheduler.db"
    storage_address: str = "127.0.0.1:50053"
    # Where runners renew their grants; empty: storage_address. Under mutual TLS, storage's
    # plaintext port (runners have no certificate).
    runner_storage_address: str = ""
    metering_address: str = "127.0.0.1:50054"
    # Address runners call back on; empty means 127.0.0.1:<bound port>.
    callback_address: str = ""
    # "local": runners are processes of this machine; "kubernetes": pods our scheduler binds (docs/kubernetes.md).
    backend: Literal["local", "kubernetes"] = "local"
    # The API server; empty: the in-cluster service account, else the kubeconfig.
    kubernetes_api_url: str = ""
    kubernetes_namespace: str = "dlaas-runs"
    # Pods carry schedulerName set to this: no other scheduler places them.
    kubernetes_scheduler_name: str = "dlaas-scheduler"
    # The runner image per "framework:version" or "framework" (JSON); others are refused at submission.
    kubernetes_images: dict[str, str] = Field(
        default_factory=lambda: {"python": "dlaas/runner:latest", "pytorch": "dlaas/runner-pytorch:2.13"}
    )
    # Seconds a cancelled run's runner has to stop its command and upload before it is killed.
    kubernetes_termination_grace_s: int = Field(default=300, ge=0)
    # Where the local backend keeps each run's working directory.
    jobs_dir: str = "jobs"
    # GPUs: "auto" uses NVML when it finds GPUs, else `virtual_gpus` CPU-backed slots.
    gpu_discovery: Literal["auto", "nvml", "virtual"] = "auto"
    virtual_gpus: int = Field(default=2, ge=0)
    node_name: str = "local"
    tiers: dict[str, Tier] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    # Framework environment per "name" or "name:version": the bin directory of its Python.
    # Frameworks not listed run in the environment dlaas runs in.
    framework_envs: dict[str, str] = Field(default_factory=dict)
    # A grant lives for the run's max runtime plus this margin.
    grant_margin_s: int = 600
    # A run whose runner or node is lost is queued again, up to this many attempts in all.
    max_attempts: int = Field(default=3, ge=1)
    # The runner stops a run at its max runtime; the scheduler stops it this much later if it has not.
    max_runtime_grace_s: int = Field(default=60, ge=0)
