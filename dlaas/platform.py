"""The embedded default: the four services as separate processes on localhost, one data dir.

`dlaas up` starts them (SQLite files, a local object store and the jobs of the local backend
under DLAAS_HOME), `dlaas status` checks them, `dlaas down` stops them. Runners are not stopped
by `down`: they outlive the services and report again when the platform is back.

Credentials: the first `up` makes the platform's service token and admin key (DLAAS_HOME/
secrets.json, mode 0600), and the account "default" (free tier) whose key, with the admin key,
goes into the CLI's config file, so that `dlaas train` works at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dlaas import config
from dlaas.procs import alive

if TYPE_CHECKING:
    import grpc

SERVICES = ("metering", "storage", "scheduler", "api_gateway")
_PREFIX = {"metering": "METERING", "storage": "STORAGE", "scheduler": "SCHEDULER", "api_gateway": "GATEWAY"}
STATE_FILE = "platform.json"
SECRETS_FILE = "secrets.json"
DEFAULT_ACCOUNT = "default"
home = config.home


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    pid: int
    port: int
    metrics_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class PlatformError(Exception):
    pass


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def read_state(root: Path | None = None) -> dict[str, ServiceProcess]:
    path = (root or home()) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {name: ServiceProcess(**entry) for name, entry in data.get("services", {}).items()}


def gateway_address(root: Path | None = None) -> str | None:
    configured = config.endpoint()
    if configured:
        return configured
    state = read_state(root)
    return state["api_gateway"].address if "api_gateway" in state else None


def healthy(address: str, timeout: float = 1.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def platform_secrets(root: Path) -> dict[str, str]:
    """The platform's service token and admin key, made on first use, kept 0600 under `root`."""
    from dlaas.credentials import new_api_key

    path = root / SECRETS_FILE
    if path.exists():
        return {str(k): str(v) for k, v in config.read_config(path).items()}
    secrets_ = {"service_token": new_api_key()[1], "admin_key": new_api_key()[1]}
    config.update_config(secrets_, path)
    return secrets_


def service_env(root: Path, ports: dict[str, int], metrics: dict[str, int]) -> dict[str, dict[str, str]]:
    """Each service's environment: its port, its SQLite file, its peers, the shared data dir, the
    platform's service token (and, for the gateway, the admin key it installs on start)."""
    secrets_ = platform_secrets(root)
    peers = {
        "SCHEDULER_ADDRESS": f"127.0.0.1:{ports['scheduler']}",
        "STORAGE_ADDRESS": f"127.0.0.1:{ports['storage']}",
        "METERING_ADDRESS": f"127.0.0.1:{ports['metering']}",
    }
    envs: dict[str, dict[str, str]] = {}
    for name in SERVICES:
        prefix = f"DLAAS_{_PREFIX[name]}_"
        env = {
            "PORT": str(ports[name]),
            "METRICS_PORT": str(metrics[name]),
            "DATABASE_URL": f"sqlite:///{root / 'db' / f'{name}.db'}",
        }
        if name in ("api_gateway", "scheduler"):
            env.update({k: v for k, v in peers.items() if not k.startswith(_PREFIX[name])})
        if name == "storage":
            env["OBJECTS_DIR"] = str(root / "objects")
        if name == "scheduler":
            env["JOBS_DIR"] = str(root / "jobs")
        if name == "api_gateway":
            env["BOOTSTRAP_ADMIN_KEY"] = secrets_["admin_key"]
        envs[name] = {prefix + key: value for key, value in env.items()}
        envs[name]["DLAAS_SERVICE_TOKEN"] = secrets_["service_token"]
    return envs


def up(root: Path | None = None, timeout: float = 60.0) -> dict[str, ServiceProcess]:
    root = root or home()
    running = read_state(root)
    if running and all(alive(p.pid) for p in running.values()):
        return running
    if running:
        down(root)
    for sub in ("db", "objects", "jobs", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    all_ports = _free_ports(2 * len(SERVICES))
    ports = dict(zip(SERVICES, all_ports[: len(SERVICES)], strict=True))
    metrics = dict(zip(SERVICES, all_ports[len(SERVICES) :], strict=True))
    envs = service_env(root, ports, metrics)
    started = {
        name: ServiceProcess(name, _spawn(root, name, envs[name]), ports[name], metrics[name]) for name in SERVICES
    }
    _write_state(root, started)
    deadline = time.monotonic() + timeout
    for proc in started.values():
        try:
            _wait_healthy(root, proc, deadline)
        except PlatformError:
            down(root)
            raise
    ensure_default_account(root, started["api_gateway"].address)
    return started


def ensure_default_account(root: Path, address: str, timeout: float = 30.0) -> None:
    """Puts the platform's admin key and a working key of the account "default" in the CLI config.

    Just started, the gateway may answer before its channels to the scheduler have connected
    (UNAVAILABLE, passed on): try again until `timeout`.
    """
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            _ensure_default_account(root, address)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _ensure_default_account(root: Path, address: str) -> None:
    import grpc

    from dlaas.credentials import bearer, with_headers
    from dlaas.gateway.v1 import accounts_pb2, accounts_pb2_grpc

    admin_key = platform_secrets(root)["admin_key"]
    values = {"admin_key": admin_key}
    path = config.config_path(root)
    existing = config.read_config(path)
    if existing.get("endpoint"):
        return  # the config is for another platform (`dlaas login --endpoint`): its key stays as it is
    current = existing.get("api_key")
    with grpc.insecure_channel(address) as raw:
        if current:
            try:
                user = accounts_pb2_grpc.AccountServiceStub(with_headers(raw, bearer(str(current))))
                user.GetAccount(accounts_pb2.GetAccountRequest(), timeout=10)
                config.update_config(values, path)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
        admin = accounts_pb2_grpc.AccountServiceStub(with_headers(raw, bearer(admin_key)))
        try:
            created = admin.CreateAccount(accounts_pb2.CreateAccountRequest(account_id=DEFAULT_ACCOUNT), timeout=10)
            values["api_key"] = created.secret
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            request = accounts_pb2.CreateApiKeyRequest(parent=f"accounts/{DEFAULT_ACCOUNT}", description="dlaas up")
            values["api_key"] = admin.CreateApiKey(request, timeout=10).secret
    config.update_config(values, path)


def restart(root: Path | None, name: str, timeout: float = 60.0) -> ServiceProcess:
    """Starts service `name` of a running platform again, on its port and with its environment
    (after a crash, say); stops it first if it still runs. Its peers keep running."""
    root = root or home()
    state = read_state(root)
    if name not in state:
        raise PlatformError(f"{name} is not part of the platform under {root}: start it with `dlaas up`")
    old = state[name]
    if alive(old.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(old.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(old.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(old.pid, signal.SIGKILL)
    ports = {n: p.port for n, p in state.items()}
    metrics = {n: p.metrics_port for n, p in state.items()}
    env = service_env(root, ports, metrics)[name]
    new = ServiceProcess(name, _spawn(root, name, env), old.port, old.metrics_port)
    _write_state(root, {**read_state(root), name: new})
    _wait_healthy(root, new, time.monotonic() + timeout)
    return new


def _spawn(root: Path, name: str, env: dict[str, str]) -> int:
    with open(root / "logs" / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**os.environ, **env},
            cwd=root,
            start_new_session=True,  # the platform outlives the shell that started it
        )
    return process.pid


def _wait_healthy(root: Path, proc: ServiceProcess, deadline: float) -> None:
    while not healthy(proc.address):
        if not alive(proc.pid) or time.monotonic() > deadline:
            tail = _tail(root / "logs" / f"{proc.name}.log")
            raise PlatformError(f"{proc.name} did not start; the end of its log:\n{tail}")
        time.sleep(0.1)


def down(root: Path | None = None, timeout: float = 15.0) -> list[str]:
    root = root or home()
    state = read_state(root)
    for proc in state.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in state.values():
        while alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        (root / STATE_FILE).unlink()
    return list(state)


def _write_state(root: Path, services: dict[str, ServiceProcess]) -> None:
    data = {"services": {name: proc.__dict__ for name, proc in services.items()}}
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, root / STATE_FILE)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def channel(root: Path | None = None, *, admin: bool = False) -> grpc.Channel:
    """A blocking channel to the gateway of the platform under `root`, acting as its account
    "default" (or with its admin key): what the CLI would use, for scripts and benchmarks."""
    import grpc

    from dlaas.credentials import bearer, with_headers

    root = root or home()
    keys = config.read_config(config.config_path(root))
    address = read_state(root)["api_gateway"].address
    return with_headers(grpc.insecure_channel(address), bearer(str(keys["admin_key" if admin else "api_key"])))
