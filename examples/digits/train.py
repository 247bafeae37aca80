"""Train a small MLP (64 -> hidden -> 10) on scikit-learn's digits with PyTorch.

Reads $DATA_DIR/digits.npz (written by prepare_data.py) and writes $RESULT_DIR/model.pt
(state_dict) and $RESULT_DIR/metrics.json. Each epoch prints a `name=value` line that dlaas
picks up as metrics, e.g. `epoch=3 loss=0.4123 accuracy=0.9111`.

Run directly:  DATA_DIR=/tmp/d RESULT_DIR=/tmp/r python train.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sleep-per-epoch",
        type=float,
        default=0.0,
        help="seconds to sleep after each epoch (for tests that need a long-running job)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.hidden < 1 or args.batch_size < 1:
        parser.error("--hidden and --batch-size must be positive")
    if args.sleep_per_epoch < 0:
        parser.error("--sleep-per-epoch must not be negative")
    return args


def require_env(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        sys.exit(f"error: environment variable {name} is not set")
    return Path(value)


def load_data(data_dir: Path) -> dict[str, np.ndarray]:
    path = data_dir / "digits.npz"
    if not path.is_file():
        sys.exit(
            f"error: {path} not found; create it with `python prepare_data.py {data_dir}` "
            "(or upload that directory to the run's data bucket)"
        )
    with np.load(path) as data:
        return {key: data[key] for key in ("x_train", "y_train", "x_test", "y_test")}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = model(x).argmax(dim=1)
    return float((predictions == y).float().mean().item())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = require_env("DATA_DIR")
    result_dir = require_env("RESULT_DIR")
    data = load_data(data_dir)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    # Not a `name=value` line: dlaas reads those as metrics.
    print(f"using device {device.type}{name}, CUDA_VISIBLE_DEVICES: {visible}", flush=True)

    seed_everything(args.seed)
    x_train = torch.from_numpy(data["x_train"]).to(device)
    y_train = torch.from_numpy(data["y_train"]).to(device)
    x_test = torch.from_numpy(data["x_test"]).to(device)
    y_test = torch.from_numpy(data["y_test"]).to(device)

    model = build_model(args.hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)
    n = x_train.shape[0]

    loss = accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, args.batch_size):
            batch = order[start : start + args.batch_size]
            optimizer.zero_grad()
            batch_loss = loss_fn(model(x_train[batch]), y_train[batch])
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item() * batch.shape[0]
        loss = total / n
        accuracy = evaluate(model, x_test, y_test)
        print(f"epoch={epoch} loss={loss:.4f} accuracy={accuracy:.4f}", flush=True)
        if args.sleep_per_epoch:
            time.sleep(args.sleep_per_epoch)

    result_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), result_dir / "model.pt")
    metrics = {"accuracy": accuracy, "loss": loss, "epochs": args.epochs, "device": device.type}
    (result_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"final accuracy={accuracy:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
