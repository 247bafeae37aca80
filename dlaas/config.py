"""Where the CLI finds the platform and its key.

The endpoint: DLAAS_ENDPOINT, else the config file's "endpoint", else the platform `dlaas up`
started under DLAAS_HOME. The API key: DLAAS_API_KEY, else the config file's "api_key"; admin
commands prefer DLAAS_ADMIN_KEY, else "admin_key", else the API key. The config file is
DLAAS_CONFIG, default DLAAS_HOME/config.json (DLAAS_HOME defaults to ~/.dlaas); it holds keys,
so it must be readable by its owner only (mode 0600) and is refused otherwise. `dlaas up` writes
the embedded platform's keys into it; `dlaas login` writes a key given to you.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


def home() -> Path:
    return Path(os.environ.get("DLAAS_HOME", "~/.dlaas")).expanduser().resolve()


def config_path(root: Path | None = None) -> Path:
    """DLAAS_CONFIG, else config.json under `root` (default DLAAS_HOME)."""
    return Path(os.environ.get("DLAAS_CONFIG") or (root or home()) / "config.json").expanduser()


def read_config(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} holds API keys but others may read it: run `chmod 600 {path}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable JSON config: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def update_config(values: dict[str, str], path: Path | None = None) -> Path:
    """Merges `values` into the config file, written 0600 from the start (never readable by others)."""
    path = path or config_path()
    data = {**read_config(path), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.replace(tmp, path)
    return path


def api_key(admin: bool = False) -> str | None:
    if admin and os.environ.get("DLAAS_ADMIN_KEY"):
        return os.environ["DLAAS_ADMIN_KEY"]
    if not admin and os.environ.get("DLAAS_API_KEY"):
        return os.environ["DLAAS_API_KEY"]
    config = read_config()
    if admin and config.get("admin_key"):
        return str(config["admin_key"])
    if os.environ.get("DLAAS_API_KEY"):
        return os.environ["DLAAS_API_KEY"]
    return str(config["api_key"]) if config.get("api_key") else None


def endpoint() -> str | None:
    if os.environ.get("DLAAS_ENDPOINT"):
        return os.environ["DLAAS_ENDPOINT"]
    value = read_config().get("endpoint")
    return str(value) if value else None
