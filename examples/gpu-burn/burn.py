"""gpu-burn: keeps the GPU it was given busy with matrix products for a while, and says which GPU it saw.

First line of output: `gpu-burn {...}`, one JSON object: its pid, CUDA_VISIBLE_DEVICES,
torch.cuda.device_count() and, for each visible device, its name and UUID
(torch.cuda.get_device_properties). Then bf16 8192×8192 matrix products back to back for
--seconds, a progress line every few seconds, and a last `gpu-burn-done {...}` line with the
products done and the TFLOP/s reached; the same summary goes to $RESULT_DIR/burn.json.

Without CUDA (a virtual GPU slot, a CPU-only machine) it multiplies small float32 matrices on the
CPU for --cpu-seconds instead, so the same run works everywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def visible_devices(torch: Any) -> list[dict[str, Any]]:
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = str(getattr(props, "uuid", ""))
        devices.append(
            {
                "index": index,
                "name": props.name,
                # NVML writes GPU-<uuid>; torch prints the bare UUID.
                "uuid": uuid if not uuid or uuid.startswith("GPU-") else f"GPU-{uuid}",
                "memory_mib": props.total_memory >> 20,
            }
        )
    return devices


def optional_torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def burn_gpu(torch: Any, seconds: float, size: int) -> dict[str, Any]:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    products, started = 0, time.perf_counter()
    last_print = started
    while (now := time.perf_counter()) - started < seconds:
        for _ in range(20):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        products += 20
        if now - last_print >= 5:
            print(f"gpu-burn: {products} products, {now - started:.0f} s", flush=True)
            last_print = now
    elapsed = time.perf_counter() - started
    return {
        "products": products,
        "seconds": round(elapsed, 3),
        "tflops": round(2 * size**3 * products / elapsed / 1e12, 1),
    }


def burn_cpu(seconds: float) -> dict[str, Any]:
    products, started = 0, time.perf_counter()
    try:
        import torch

        a, b = torch.randn(256, 256), torch.randn(256, 256)
        while time.perf_counter() - started < seconds:
            a @ b
            products += 1
    except ImportError:  # no torch at all: still a CPU-bound loop of the same length
        while time.perf_counter() - started < seconds:
            sum(i * i for i in range(10_000))
            products += 1
    return {"products": products, "seconds": round(time.perf_counter() - started, 3), "tflops": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="how long to keep the GPU busy (default 25)")
    parser.add_argument("--cpu-seconds", type=float, default=3.0, help="how long to loop when there is no GPU (3)")
    parser.add_argument("--size", type=int, default=8192, help="matrix side (8192: about 1.4 ms a product on an H100)")
    args = parser.parse_args()
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "python": sys.version.split()[0],
    }
    torch = optional_torch()
    cuda = torch is not None and torch.cuda.is_available()
    info.update(
        {
            "torch": getattr(torch, "__version__", None),
            "cuda_available": cuda,
            "device_count": torch.cuda.device_count() if cuda else 0,
            "devices": visible_devices(torch) if cuda else [],
        }
    )
    print(f"gpu-burn {json.dumps(info)}", flush=True)
    done = burn_gpu(torch, args.seconds, args.size) if cuda else burn_cpu(args.cpu_seconds)
    done["device"] = "cuda" if cuda else "cpu"
    print(f"gpu-burn-done {json.dumps(done)}", flush=True)
    results = Path(os.environ.get("RESULT_DIR", "."))
    results.mkdir(parents=True, exist_ok=True)
    (results / "burn.json").write_text(json.dumps({**info, **done}, indent=2))


if __name__ == "__main__":
    main()
