"""The environment the user's command runs in (FfDL-compatible learner variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from dlaas.runner.config import RunnerConfig

# Variables the runner itself is configured with; never handed to the user's command.
RUNNER_ONLY_PREFIX = "DLAAS_"
# The runner's own interpreter environment: wrong for the framework's Python.
_INTERPRETER_VARIABLES = ("VIRTUAL_ENV", "PYTHONHOME")


# Math libraries' thread pools (PyTorch's intra-op pool follows OMP_NUM_THREADS), sized to the
# run's CPUs: left to themselves each takes every core of the machine, and two runs side by side
# on one host each train several times slower. torchrun sets OMP_NUM_THREADS=1 for the same reason.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_limits(cpus: float) -> dict[str, str]:
    """The thread-pool variables for a learner with `cpus` CPUs (at least one thread)."""
    threads = str(max(1, int(cpus)))
    return dict.fromkeys(THREAD_VARIABLES, threads)


def build_child_env(config: RunnerConfig, base_env: Mapping[str, str]) -> dict[str, str]:
    """``base_env`` (the runner's environment, less DLAAS_*), the run's own variables, then the
    learner variables, which win: a spec cannot move CUDA_VISIBLE_DEVICES off its GPUs."""
    env = {key: value for key, value in base_env.items() if not key.startswith(RUNNER_ONLY_PREFIX)}
    if config.python_bin_dir:
        for key in _INTERPRETER_VARIABLES:
            env.pop(key, None)
    env.update(config.environment)
    dirs = config.dirs
    env.update(
        {
            "DATA_DIR": str(dirs.data),
            "MODEL_DIR": str(dirs.model),
            "RESULT_DIR": str(dirs.results),
            "LOG_DIR": str(dirs.logs),
            "CHECKPOINT_DIR": str(dirs.checkpoints),
            "JOB_STATE_DIR": str(dirs.job),
            "TRAINING_ID": config.run_id,
            "GPU_COUNT": str(len(config.gpu_indices)),
            "NUM_LEARNERS": str(config.num_learners),
            "LEARNER_ID": str(config.learner_id),
            "CUDA_VISIBLE_DEVICES": ",".join(str(index) for index in config.gpu_indices),
            # NVML numbers GPUs by PCI bus; CUDA's default order (fastest first) can differ.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if config.python_bin_dir:
        inherited = env.get("PATH", os.defpath)
        env["PATH"] = f"{config.python_bin_dir}{os.pathsep}{inherited}" if inherited else config.python_bin_dir
    return env
