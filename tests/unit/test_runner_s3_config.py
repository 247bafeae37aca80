"""runner.json with S3 accesses: credentials or presigned URLs round-trip and never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlaas.runner.config import ConfigError, RunnerConfig
from dlaas.transfer_s3 import PresignedGet, S3Location


def config(tmp_path: Path, **changes: object) -> RunnerConfig:
    document: dict[str, object] = {
        "run": "accounts/a/runs/r1",
        "run_id": "r1",
        "attempt": 1,
        "run_token": "token-SECRET",
        "scheduler_address": "127.0.0.1:1",
        "command": "true",
        "job_dir": str(tmp_path / "job"),
        "results_path": None,
        "results_s3": {
            "endpoint": "http://127.0.0.1:9",
            "region": "default",
            "bucket": "results",
            "prefix": "r1",
            "access_key_id": "TEMPKEY",
            "secret_access_key": "temp-SECRET",
            "session_token": "token-SESSION",
            "expire_ms": 123,
        },
        "data_s3": {
            "endpoint": "http://127.0.0.1:9",
            "bucket": "data",
            "prefix": "mnist",
            "presigned": {
                "objects": [["mnist/a", 3, "etag", "http://127.0.0.1:9/data/mnist/a?X-Amz-Signature=sig-SECRET"]],
                "post_url": "",
                "post_fields": {},
            },
        },
    }
    document.update(changes)
    return RunnerConfig.from_dict(document)


def test_s3_accesses_round_trip_through_runner_json(tmp_path: Path) -> None:
    loaded = config(tmp_path)
    path = loaded.write(tmp_path / "runner.json")

    again = RunnerConfig.load(path)

    assert again == loaded
    assert again.results_path is None
    assert again.results_s3 == S3Location(
        "http://127.0.0.1:9", "default", "results", "r1", "TEMPKEY", "temp-SECRET", "token-SESSION", 123
    )
    assert again.data_s3 is not None and again.data_s3.presigned
    assert again.data_s3.objects == (
        PresignedGet("mnist/a", 3, "etag", "http://127.0.0.1:9/data/mnist/a?X-Amz-Signature=sig-SECRET"),
    )
    assert path.stat().st_mode & 0o777 == 0o600
    assert "SECRET" not in repr(again) and "SESSION" not in repr(again)


def test_results_need_a_path_or_an_s3_location(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="results_path"):
        config(tmp_path, results_s3=None)
    with pytest.raises(ConfigError, match="results_s3"):
        config(tmp_path, results_s3={"endpoint": "http://x", "bucket": "b"})
