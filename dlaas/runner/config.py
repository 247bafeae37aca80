"""The runner's input: JOB_DIR/runner.json, written by the backend that starts the runner.

runner.json holds the attempt's secrets (its run token, the grant's temporary credentials or
presigned URLs) only while the attempt is live: the runner reads it once, keeps what it needs in
memory and, before it reports its end, rewrites the file without them (`remove_secrets`). The
local backend does the same for a runner that died before it could.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlaas.transfer_s3 import PresignedGet, S3Location


class ConfigError(ValueError):
    """runner.json is missing, unreadable or malformed; the message says what and where."""


@dataclass(frozen=True)
class JobDirs:
    """The folders of one run's job directory, as the learner environment names them."""

    job: Path

    @property
    def model(self) -> Path:
        return self.job / "model"

    @property
    def data(self) -> Path:
        return self.job / "data"

    @property
    def results(self) -> Path:
        return self.job / "results"

    @property
    def logs(self) -> Path:
        return self.job / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.job / "checkpoints"

    @property
    def training_log(self) -> Path:
        return self.job / "training.log"

    @property
    def state_file(self) -> Path:
        return self.job / "state.json"


@dataclass(frozen=True)
class RunnerConfig:
    """One attempt of one run, as the backend describes it. ``run_token`` and keys are never shown.

    Each input and the results are either a path on the local store or an S3 location; the
    runner.json contract: ``code_archive_path``/``code_s3``, ``data_path``/``data_s3``,
    ``results_path``/``results_s3`` (one of each pair, the code and data ones optional).
    """

    run: str
    run_id: str
    attempt: int
    run_token: str = field(repr=False)
    scheduler_address: str
    command: str
    python_bin_dir: str
    gpu_indices: tuple[int, ...]
    num_learners: int
    environment: Mapping[str, str]
    job_dir: Path
    code_archive_path: Path | None
    data_path: Path | None
    # On the local store; None when the results go to an S3-compatible store (results_s3).
    results_path: Path | None
    max_runtime_s: float | None
    trace_carrier: Mapping[str, str]
    # Inputs and results on an S3-compatible store, with the grant's temporary credentials.
    code_s3: S3Location | None = None
    data_s3: S3Location | None = None
    results_s3: S3Location | None = None
    # The storage grant behind the S3 locations (accounts/…/grants/…) and where to renew it with the
    # run token; "" for a run on the platform's local store only.
    grant: str = ""
    storage_address: str = ""
    # 1-based, as LEARNER_ID: which of `num_learners` learners of a gang this runner is.
    learner_id: int = 1

    @property
    def dirs(self) -> JobDirs:
        return JobDirs(self.job_dir)

    def to_dict(self) -> dict[str, Any]:
        """The runner.json document, as `from_dict` reads it."""
        optional = {
            "code_archive_path": self.code_archive_path,
            "data_path": self.data_path,
            "results_path": self.results_path,
        }
        s3 = {"code_s3": self.code_s3, "data_s3": self.data_s3, "results_s3": self.results_s3}
        return {
            "run": self.run,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "run_token": self.run_token,
            "scheduler_address": self.scheduler_address,
            "command": self.command,
            "python_bin_dir": self.python_bin_dir,
            "gpu_indices": list(self.gpu_indices),
            "num_learners": self.num_learners,
            "learner_id": self.learner_id,
            "environment": dict(self.environment),
            "job_dir": str(self.job_dir),
            **{key: str(value) if value is not None else None for key, value in optional.items()},
            **{key: value.to_dict() if value is not None else None for key, value in s3.items()},
            "max_runtime_s": self.max_runtime_s,
            "trace_carrier": dict(self.trace_carrier),
            "grant": self.grant,
            "storage_address": self.storage_address,
        }

    def write(self, path: Path) -> Path:
        """Writes runner.json readable by its owner only: it holds the run token and the grant's keys."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)
        return path

    @classmethod
    def load(cls, path: Path) -> RunnerConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read runner config {path}: {exc}") from exc
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
        return cls.from_dict(document, source=str(path))

    @classmethod
    def from_dict(cls, document: object, *, source: str = "runner config") -> RunnerConfig:
        """Validate a decoded runner.json; unknown keys are ignored (newer backends may add some)."""
        if not isinstance(document, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        if document.get(SECRETS_REMOVED):
            raise ConfigError(f"{source}: its attempt has ended and its secrets were removed; it cannot run again")
        fields = _Fields(document, source)
        results_s3 = fields.s3_location("results_s3")
        return cls(
            run=fields.text("run"),
            run_id=fields.text("run_id"),
            attempt=fields.positive_int("attempt"),
            run_token=fields.text("run_token"),
            scheduler_address=fields.text("scheduler_address"),
            command=fields.text("command"),
            python_bin_dir=fields.text("python_bin_dir", allow_empty=True, default=""),
            gpu_indices=fields.gpu_indices("gpu_indices"),
            num_learners=fields.positive_int("num_learners", default=1),
            learner_id=fields.positive_int("learner_id", default=1),
            environment=fields.string_map("environment"),
            job_dir=fields.absolute_path("job_dir"),
            code_archive_path=fields.optional_absolute_path("code_archive_path"),
            data_path=fields.optional_absolute_path("data_path"),
            results_path=(
                fields.optional_absolute_path("results_path") if results_s3 else fields.absolute_path("results_path")
            ),
            max_runtime_s=fields.optional_seconds("max_runtime_s"),
            trace_carrier=fields.string_map("trace_carrier"),
            code_s3=fields.s3_location("code_s3"),
            data_s3=fields.s3_location("data_s3"),
            results_s3=results_s3,
            grant=fields.text("grant", allow_empty=True, default=""),
            storage_address=fields.text("storage_address", allow_empty=True, default=""),
        )


# Set in a runner.json whose secrets were removed (the attempt ended): it describes, it cannot run.
SECRETS_REMOVED = "secrets_removed"
# What an S3 location keeps once its attempt ended: where it was and until when, no credential.
_LOCATION_KEEPS = ("endpoint", "region", "bucket", "prefix", "expire_ms")


def without_secrets(document: Mapping[str, Any]) -> dict[str, Any]:
    """runner.json as others may read it after the attempt: no run token, no key, no signed URL.

    What stays: the run, attempt, GPUs, paths, the grant's name and the locations with their
    expiry (make chaos and people looking at a job directory read these).
    """
    kept = {key: value for key, value in document.items() if key != "run_token"}
    for key in ("code_s3", "data_s3", "results_s3"):
        location = kept.get(key)
        if not isinstance(location, dict):
            continue
        scrubbed = {name: location[name] for name in _LOCATION_KEEPS if name in location}
        if "presigned" in location:
            signed = location["presigned"]
            objects = signed.get("objects", []) if isinstance(signed, dict) else []
            scrubbed["presigned"] = {"object_count": len(objects) if isinstance(objects, list) else 0}
        kept[key] = scrubbed
    kept[SECRETS_REMOVED] = True
    return kept


def remove_secrets(path: Path) -> bool:
    """Rewrites runner.json without its secrets, atomically and mode 0600; False if it could not.

    Idempotent. A file that is gone or not ours to rewrite (a read-only Secret volume on
    Kubernetes, deleted with its pod) is left as it is.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(document, dict):
        return False
    if document.get(SECRETS_REMOVED):
        return True
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(without_secrets(document), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return False
    return True


_MISSING: Any = object()


class _Fields:
    def __init__(self, document: dict[str, Any], source: str) -> None:
        self._document = document
        self._source = source

    def _error(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self._source}: field {key!r} must be {expected}")

    def _get(self, key: str, default: Any) -> Any:
        value = self._document.get(key, default)
        if value is _MISSING:
            raise ConfigError(f"{self._source}: field {key!r} is required")
        return value

    def text(self, key: str, *, allow_empty: bool = False, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or (not value and not allow_empty):
            raise self._error(key, "a string" if allow_empty else "a non-empty string")
        return value

    def positive_int(self, key: str, *, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if not _is_int(value) or value < 1:
            raise self._error(key, "a positive integer")
        return int(value)

    def gpu_indices(self, key: str) -> tuple[int, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(_is_int(item) and item >= 0 for item in value):
            raise self._error(key, "a list of non-negative integers")
        if len(set(value)) != len(value):
            raise self._error(key, "a list without repeats")
        return tuple(int(item) for item in value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self._get(key, None)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and "=" not in k and "\x00" not in k and isinstance(v, str) and "\x00" not in v
            for k, v in value.items()
        ):
            raise self._error(key, "an object of string values keyed by names without '=' or NUL")
        return dict(value)

    def absolute_path(self, key: str) -> Path:
        value = self.text(key)
        path = Path(value)
        if not path.is_absolute():
            raise self._error(key, "an absolute path")
        return path

    def optional_absolute_path(self, key: str) -> Path | None:
        if self._get(key, None) is None:
            return None
        return self.absolute_path(key)

    def s3_location(self, key: str) -> S3Location | None:
        value = self._get(key, None)
        if value is None:
            return None
        problem = self._error(key, "an object with endpoint, bucket and credentials or presigned URLs")
        if not isinstance(value, dict):
            raise problem
        if not all(isinstance(value.get(name), str) and value[name] for name in ("endpoint", "bucket")):
            raise problem
        if not all(isinstance(value.get(name, ""), str) for name in ("region", "prefix")):
            raise problem
        expire_ms = value.get("expire_ms", 0)
        if not _is_int(expire_ms):
            raise problem
        common = {
            "endpoint": value["endpoint"],
            "region": value.get("region", ""),
            "bucket": value["bucket"],
            "prefix": value.get("prefix", ""),
            "expire_ms": int(expire_ms),
        }
        signed = value.get("presigned")
        if signed is not None:
            try:
                objects = tuple(
                    PresignedGet(str(k), int(size), str(etag), str(url)) for k, size, etag, url in signed["objects"]
                )
                fields = tuple((str(name), str(v)) for name, v in dict(signed["post_fields"]).items())
                post_url = str(signed["post_url"])
            except (KeyError, TypeError, ValueError) as exc:
                raise problem from exc
            return S3Location(**common, presigned=True, objects=objects, post_url=post_url, post_fields=fields)
        keys = ("access_key_id", "secret_access_key")
        if not all(isinstance(value.get(name), str) and value[name] for name in keys):
            raise problem
        if not isinstance(value.get("session_token", ""), str):
            raise problem
        return S3Location(
            **common,
            access_key_id=value["access_key_id"],
            secret_access_key=value["secret_access_key"],
            session_token=value.get("session_token", ""),
        )

    def optional_seconds(self, key: str) -> float | None:
        value = self._get(key, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self._error(key, "a non-negative number of seconds or null")
        return float(value) if value > 0 else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
