"""Runs the digits example end to end: prepare_data.py, then a short train.py run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "digits"
EPOCH_LINE = re.compile(r"^epoch=(\d+) loss=\d+\.\d{4} accuracy=\d\.\d{4}$", re.MULTILINE)


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_prepare_and_train(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result_dir = tmp_path / "results" / "run-1"  # does not exist yet: train.py creates it

    out = run([str(EXAMPLE_DIR / "prepare_data.py"), str(data_dir)])
    assert "digits.npz" in out
    with np.load(data_dir / "digits.npz") as data:
        assert data["x_train"].dtype == np.float32 and data["x_train"].shape[1] == 64
        assert data["y_train"].dtype == np.int64
        assert len(data["x_test"]) == len(data["y_test"]) == 360
        assert data["x_train"].min() >= 0.0 and data["x_train"].max() <= 1.0

    env = {**os.environ, "DATA_DIR": str(data_dir), "RESULT_DIR": str(result_dir)}
    # Like dlaas does: the model code directory is the working directory.
    out = run(["train.py", "--epochs", "5"], env=env, cwd=EXAMPLE_DIR)

    assert [int(epoch) for epoch in EPOCH_LINE.findall(out)] == [1, 2, 3, 4, 5]
    assert re.search(r"^final accuracy=\d\.\d+$", out, re.MULTILINE)
    assert (result_dir / "model.pt").is_file()
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8
    assert metrics["epochs"] == 5
    assert metrics["device"] in ("cpu", "cuda")
    assert metrics["loss"] > 0


def test_train_without_data_fails_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "missing"), "RESULT_DIR": str(tmp_path / "r")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE_DIR / "train.py"), "--epochs", "1"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "digits.npz not found" in result.stderr
