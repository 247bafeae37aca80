"""Write scikit-learn's digits data set as OUT_DIR/digits.npz for the digits example.

Usage: python prepare_data.py OUT_DIR

The data ships inside scikit-learn, so nothing is downloaded. Pixels are scaled from 0..16 to
[0, 1] (float32), labels are int64, and the train/test split is fixed (seed 0, 20% test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
TEST_SIZE = 0.2


def prepare(out_dir: Path) -> Path:
    """Write digits.npz under out_dir and return its path."""
    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, shuffle=True, stratify=y
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "digits.npz"
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="directory to write digits.npz into")
    args = parser.parse_args(argv)
    path = prepare(args.out_dir)
    with np.load(path) as data:
        n_train, n_test = len(data["y_train"]), len(data["y_test"])
    print(f"wrote {path} ({n_train} train, {n_test} test, 64 features, 10 classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
