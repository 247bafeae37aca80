# dlaas — every set-up step a fresh machine needs is here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PROTO_PACKAGES := types gateway scheduler storage metering
PROTOS := $(wildcard protos/dlaas/*/v1/*.proto)
STAMP := $(VENV)/.installed

.PHONY: chaos load validate-deploy install proto lint test test-fast demo up down status clean bench bench-scheduler bench-dispatch bench-submit bench-overhead bench-staging bench-metering bench-hpo bench-hpo-bound bench-logs gpu-check gpu-wheels

install: $(STAMP) proto

$(STAMP): pyproject.toml package.json
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,examples]'
	npm install --no-audit --no-fund --silent
	touch $(STAMP)

# Typed Python stubs from protos/, never edited by hand (git ignores them). Written in place,
# so services running from this tree never see them missing.
proto: $(STAMP) dlaas/types/v1/run_pb2.py

dlaas/types/v1/run_pb2.py: $(PROTOS)
	PATH=$(abspath $(BIN)):$$PATH $(PY) -m grpc_tools.protoc -Iprotos -Ithird_party/protos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTOS)
	for p in $(PROTO_PACKAGES); do touch dlaas/$$p/__init__.py dlaas/$$p/v1/__init__.py; done

lint: install
	npx buf lint
	npx buf format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install
	$(BIN)/pytest

demo: install
	$(PY) examples/demo.py

# Renders every deploy/ overlay (deploy/kustomize.py) and validates every object strictly (kubernetes-validate).
validate-deploy: install
	$(PY) deploy/validate.py

# The embedded default keeps its data in ./.dlaas unless DLAAS_HOME says otherwise.
export DLAAS_HOME ?= $(CURDIR)/.dlaas

up: install
	$(BIN)/dlaas up

down:
	$(BIN)/dlaas down

status:
	$(BIN)/dlaas status

bench-scheduler: install
	$(PY) -m bench.scheduler

bench-dispatch: install
	$(PY) -m bench.dispatch

bench-submit: install
	$(PY) -m bench.submit

bench-overhead: install
	$(PY) -m bench.overhead

# Ceph RGW packages needed (see docs/storage.md); 1 GB by default (RGW then needs ≈ 10 GB of memory), BENCH_STAGING_MB=256 for a lighter run.
bench-staging: install
	$(PY) -m bench.staging

# 100,000 usage events (10 % redeliveries) through the real metering server on SQLite.
bench-metering: install
	$(PY) -m bench.metering

# The digits sweep by random search and by ASHA, same trials: GPU-seconds ratio and best accuracies.
bench-hpo: install
	$(PY) -m bench.hpo

bench-hpo-bound: install
	$(PY) -m bench.hpo_bound $(HPO_BOUND_ARGS)

# From a line a run prints to its arrival at a `dlaas logs -f` client.
bench-logs: install
	$(PY) -m bench.logs

# For a machine with NVIDIA GPUs (NVML): the embedded default checked end to end, last line
# gpu_check=pass|fail. GPU_CHECK_ARGS=--virtual runs the same flow on virtual GPUs (skipped-nvml).
gpu-check: install
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

# The wheels the device machine lacks, into .whl/ (bench/README.md: the device command).
gpu-wheels: install
	bash bench/gpu_wheels.sh

# 10 accounts × 100 concurrent submissions while 50 clients follow logs and 10 stream metrics
# (LOAD_ARGS=--seed N reproduces a run); last line: errors and p99 latencies.
load: install
	$(PY) -m bench.load $(LOAD_ARGS)

# Kill -9 of services and runners under load; last line: cycles, runs, lost, duplicated, quota
# violations, ledger difference (CHAOS_ARGS=--seed N reproduces a run).
chaos: install
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# Every benchmark, one after the other; each prints its figures as its last line.
bench: bench-scheduler bench-dispatch bench-submit bench-overhead bench-metering bench-staging bench-hpo bench-logs

clean:
	rm -rf $(addprefix dlaas/,$(PROTO_PACKAGES)) .dlaas .pytest_cache .mypy_cache .ruff_cache
