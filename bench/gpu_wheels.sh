#!/usr/bin/env bash
# make gpu-wheels: downloads into .whl/ (git-ignored) the wheels, for CPython 3.12 on manylinux
# x86_64, of every package the services, the CLI and the runner need that the device machine's
# image lacks, at the versions this project's .venv holds, so that `make gpu-check` can run there
# with nothing fetched (it reaches no registry). Also carried even though the image has them:
# grpcio and its grpcio-* companions (the generated stubs refuse an older grpcio), protobuf (the
# generated code names its minimum runtime) and typing-extensions (pydantic needs a recent one).
# Left out: the PostgreSQL driver (the embedded default uses SQLite) and the device's own torch and
# nvidia-ml-py. One version of each package: pip on the device refuses two.
# See bench/README.md for the device command that installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${WHEELS_DIR:-.whl}

# The device image's Python packages, as /work/.library/device/KINDS.md listed them (read on a
# machine running the 'cuda' image, 2026-11-17). Names normalized (lower case, '-').
PRESENT="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp nvidia-ml-py"
FORCE="grpcio grpcio-health-checking grpcio-reflection grpcio-status protobuf typing-extensions"
SKIP="dlaas psycopg psycopg-binary psycopg-c psycopg-pool"

# name==version of every package dlaas needs at run time (its dependencies, recursively, for
# Python 3.12 on Linux), from the versions installed in $PY's environment.
mapfile -t WANTED < <(PRESENT="$PRESENT" FORCE="$FORCE" SKIP="$SKIP" "$PY" - <<'EOF'
import importlib.metadata as md
import os
import re

from packaging.requirements import Requirement

ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "os_name": "posix",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
       "platform_python_implementation": "CPython"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


present, force, skip = (set(os.environ[k].split()) for k in ("PRESENT", "FORCE", "SKIP"))
found: dict[str, str] = {}


def walk(name: str, extras: frozenset[str]) -> None:
    dist = md.distribution(name)
    key = norm(dist.metadata["Name"])
    if key in found and not extras:
        return
    found[key] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**ENV, "extra": e}) for e in ("", *extras)):
            walk(req.name, frozenset(req.extras))


walk("dlaas", frozenset())
for key, version in sorted(found.items()):
    if key not in skip and (key in force or key not in present):
        print(f"{key}=={version}")
EOF
)

PLATFORMS=()
for tag in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  PLATFORMS+=(--platform "$tag")
done

rm -rf "$OUT"
mkdir -p "$OUT"
echo "downloading ${#WANTED[@]} wheels into $OUT: ${WANTED[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$OUT" "${WANTED[@]}"
ls "$OUT"
du -sh "$OUT"
