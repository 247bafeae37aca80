"""Node discovery for the local backend: NVML where there are GPUs, else virtual CPU-backed slots."""

from __future__ import annotations

import logging

from services.scheduler.domain.model import Node

log = logging.getLogger(__name__)


def _nvml_node(name: str) -> Node | None:
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVML raises its own error types; any means "no GPUs"
        log.info("NVML unavailable: %s", exc)
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return None
        product = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        product = product.decode() if isinstance(product, bytes) else str(product)
        return Node(name=name, gpu_type=gpu_type_of(product), gpu_count=int(count))
    finally:
        pynvml.nvmlShutdown()


def gpu_type_of(product: str) -> str:
    """'NVIDIA H100 80GB HBM3' → 'h100'; 'Tesla V100-SXM2-16GB' → 'v100'."""
    for word in product.lower().replace("-", " ").split():
        if word not in ("nvidia", "tesla", "geforce", "quadro") and any(c.isdigit() for c in word):
            return word
    return product.lower()


def discover(mode: str, name: str, virtual_gpus: int) -> list[Node]:
    if mode in ("auto", "nvml"):
        node = _nvml_node(name)
        if node is not None:
            log.info("found %d %s GPU(s) with NVML", node.gpu_count, node.gpu_type)
            return [node]
        if mode == "nvml":
            raise RuntimeError("gpu_discovery=nvml but NVML found no GPUs")
    return [Node(name=name, gpu_type="virtual", gpu_count=virtual_gpus)]
