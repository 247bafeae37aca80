"""Experiments: the `experiment:` section of a manifest, and the rules on trials (why one
failed, whether one never reported its objective). Pure."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.api_gateway.domain import search
from services.common.errors import FieldViolation, InvalidArgument

METHODS = ("grid", "random", "asha")
SECTION = "experiment"
MAX_RUNS_LIMIT = 10_000
# Where the parameters reach the command: substituted as ${name}, and as JSON in this variable
# (the runner writes it to a file and names the file in DLAAS_HPARAMS_FILE).
PARAMETERS_ENV = "DLAAS_HPARAMS"


@dataclass(frozen=True)
class ExperimentConfig:
    method: str
    metric: str
    goal: str
    space: search.Space
    max_runs: int
    max_parallel_runs: int
    max_failed_runs: int
    retries: int = 1
    seed: int = 0
    asha: search.Asha = field(default_factory=search.Asha)
    # A running trial that has not reported the objective after this long is flagged.
    objective_grace_s: int = 120

    def parameters(self, trial: int) -> dict[str, search.Value]:
        if self.method == "grid":
            return search.grid_point(self.space, trial)
        return search.sample(self.space, self.seed, trial)

    def capacity(self) -> int | None:
        """How many distinct trials the method can make (a grid's size), None when unbounded."""
        return search.grid_size(self.space) if self.method == "grid" else None

    def to_json(self) -> str:
        return json.dumps(
            {
                "method": self.method,
                "objective": {"metric": self.metric, "goal": self.goal},
                "max_runs": self.max_runs,
                "max_parallel_runs": self.max_parallel_runs,
                "max_failed_runs": self.max_failed_runs,
                "retries": self.retries,
                "seed": self.seed,
                "objective_grace_s": self.objective_grace_s,
                "asha": {
                    "min_step": self.asha.min_step,
                    "max_step": self.asha.max_step,
                    "reduction_factor": self.asha.reduction_factor,
                },
                "parameters": {p.name: _parameter_json(p) for p in self.space.parameters},
            }
        )


def _parameter_json(p: search.Parameter) -> dict[str, Any]:
    if isinstance(p, search.Categorical):
        return {"values": list(p.values)}
    kind = "double" if isinstance(p, search.Double) else "int"
    return {"type": kind, "min": p.low, "max": p.high, "scale": "log" if p.log else "linear", "steps": p.steps}


def split_manifest(document: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """The training manifest and the experiment section of an experiment manifest."""
    training = {k: v for k, v in document.items() if k != SECTION}
    return training, document.get(SECTION)


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        self.items.append(FieldViolation(path, description))

    def integer(self, section: Mapping[str, Any], key: str, path: str, default: int | None, low: int) -> int:
        value = section.get(key, default)
        if value is None:
            self.add(f"{path}.{key}", "is required")
            return low
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(f"{path}.{key}", f"must be an integer, got {value!r}")
            return low
        if value < low:
            self.add(f"{path}.{key}", f"must be at least {low}, got {value}")
            return low
        return value


def _number(v: _Violations, value: object, path: str) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        v.add(path, f"must be a finite number, got {value!r}")
        return None
    return float(value)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _parameter(v: _Violations, name: str, spec: object, path: str) -> search.Parameter | None:
    if not _NAME.match(name):
        v.add(path, "a parameter name is a letter or _ then letters, digits or _ (at most 64)")
        return None
    if not isinstance(spec, Mapping):
        v.add(path, "must be a mapping: {type: double|int, min, max, scale} or {values: [...]}")
        return None
    unknown = set(spec) - {"type", "min", "max", "scale", "steps", "values"}
    for key in sorted(map(str, unknown)):
        v.add(f"{path}.{key}", "is not a parameter setting (type, min, max, scale, steps, values)")
    kind = spec.get("type", "categorical" if "values" in spec else None)
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            v.add(f"{path}.values", "must be a non-empty list")
            return None
        if not all(isinstance(x, str | int | float | bool) for x in values):
            v.add(f"{path}.values", "must hold strings, numbers or booleans")
            return None
        if len(set(map(str, values))) != len(values):
            v.add(f"{path}.values", "must not repeat a value")
        return search.Categorical(name, tuple(values))
    if kind not in ("double", "int"):
        v.add(f"{path}.type", f"must be double, int or categorical, got {kind!r}")
        return None
    low, high = _number(v, spec.get("min"), f"{path}.min"), _number(v, spec.get("max"), f"{path}.max")
    scale = spec.get("scale", "linear")
    if scale not in ("linear", "log"):
        v.add(f"{path}.scale", f"must be linear or log, got {scale!r}")
    steps = spec.get("steps", 3 if kind == "double" else 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        v.add(f"{path}.steps", f"must be a non-negative integer, got {steps!r}")
        steps = 3
    if low is None or high is None:
        return None
    if low > high:
        v.add(f"{path}.max", f"must be at least min ({low:g}), got {high:g}")
        return None
    if scale == "log" and low <= 0:
        v.add(f"{path}.min", f"must be above 0 on a log scale, got {low:g}")
        return None
    if kind == "int":
        if low != int(low) or high != int(high):
            v.add(path, "min and max of an int parameter must be integers")
            return None
        return search.Integer(name, int(low), int(high), scale == "log", steps)
    return search.Double(name, low, high, scale == "log", steps or 3)


def parse_experiment(section: object) -> ExperimentConfig:
    """The `experiment:` section, checked; every problem is reported with its path."""
    path = SECTION
    if section is None:
        raise InvalidArgument.field(path, "is required: the search space, method and objective")
    if not isinstance(section, Mapping):
        raise InvalidArgument.field(path, "must be a mapping")
    v = _Violations()
    known = {
        "method",
        "objective",
        "parameters",
        "max_runs",
        "max_parallel_runs",
        "max_failed_runs",
        "retries",
        "seed",
        "asha",
        "objective_grace_s",
    }
    for key in sorted(map(str, set(section) - known)):
        v.add(f"{path}.{key}", f"is not an experiment setting ({', '.join(sorted(known))})")
    method = section.get("method", "random")
    if method not in METHODS:
        v.add(f"{path}.method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    objective = section.get("objective")
    metric, goal = "", search.MAXIMIZE
    if not isinstance(objective, Mapping):
        v.add(f"{path}.objective", "is required: {metric: NAME, goal: maximize|minimize}")
    else:
        metric = objective.get("metric", "")
        if not isinstance(metric, str) or not _NAME.match(metric or ""):
            v.add(f"{path}.objective.metric", f"must be a metric name, got {metric!r}")
        goal = objective.get("goal", search.MAXIMIZE)
        if goal not in (search.MAXIMIZE, search.MINIMIZE):
            v.add(f"{path}.objective.goal", f"must be maximize or minimize, got {goal!r}")
    parameters = section.get("parameters")
    space = search.Space(())
    if not isinstance(parameters, Mapping) or not parameters:
        v.add(f"{path}.parameters", "is required: a mapping of parameter name to its range or values")
    else:
        parsed = [_parameter(v, str(name), spec, f"{path}.parameters.{name}") for name, spec in parameters.items()]
        space = search.Space(tuple(p for p in parsed if p is not None))
    asha = search.Asha()
    asha_section = section.get("asha", {})
    if not isinstance(asha_section, Mapping):
        v.add(f"{path}.asha", "must be a mapping: {min_step, max_step, reduction_factor}")
    else:
        for key in sorted(map(str, set(asha_section) - {"min_step", "max_step", "reduction_factor"})):
            v.add(f"{path}.asha.{key}", "is not an ASHA setting (min_step, max_step, reduction_factor)")
        asha = search.Asha(
            v.integer(asha_section, "min_step", f"{path}.asha", 1, 1),
            v.integer(asha_section, "max_step", f"{path}.asha", 27, 1),
            v.integer(asha_section, "reduction_factor", f"{path}.asha", 3, 2),
        )
    default_runs = search.grid_size(space) if method == "grid" and space.parameters else None
    max_runs = v.integer(section, "max_runs", path, default_runs, 1)
    if max_runs > MAX_RUNS_LIMIT:
        v.add(f"{path}.max_runs", f"must be at most {MAX_RUNS_LIMIT}, got {max_runs}")
    parallel = v.integer(section, "max_parallel_runs", path, min(max_runs, 1), 1)
    failed = v.integer(section, "max_failed_runs", path, max_runs, 0)
    retries = v.integer(section, "retries", path, 1, 0)
    seed = v.integer(section, "seed", path, 0, 0)
    grace = v.integer(section, "objective_grace_s", path, 120, 1)
    if method == "grid" and space.parameters and max_runs > search.grid_size(space):
        v.add(f"{path}.max_runs", f"the grid has {search.grid_size(space)} points; max_runs is {max_runs}")
    if v.items:
        raise InvalidArgument(
            f"the experiment section has {len(v.items)} problem(s): {v.items[0].field}: {v.items[0].description}",
            v.items,
        )
    return ExperimentConfig(method, metric, goal, space, max_runs, parallel, failed, retries, seed, asha, grace)


def config_from_json(text: str) -> ExperimentConfig:
    """The stored config back (it was checked when the experiment was created)."""
    data = json.loads(text)
    parameters: list[search.Parameter] = []
    for name, spec in data["parameters"].items():
        if "values" in spec:
            parameters.append(search.Categorical(name, tuple(spec["values"])))
        elif spec["type"] == "int":
            parameters.append(search.Integer(name, spec["min"], spec["max"], spec["scale"] == "log", spec["steps"]))
        else:
            parameters.append(search.Double(name, spec["min"], spec["max"], spec["scale"] == "log", spec["steps"]))
    asha = data["asha"]
    return ExperimentConfig(
        data["method"],
        data["objective"]["metric"],
        data["objective"]["goal"],
        search.Space(tuple(parameters)),
        data["max_runs"],
        data["max_parallel_runs"],
        data["max_failed_runs"],
        data["retries"],
        data["seed"],
        search.Asha(asha["min_step"], asha["max_step"], asha["reduction_factor"]),
        data["objective_grace_s"],
    )


# ---- failed trials ------------------------------------------------------------------------------

_OOM = re.compile(r"out of memory|MemoryError|OOMKilled|Cannot allocate memory", re.IGNORECASE)
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*)$")


def failure_cause(exit_code: int | None, log_tail: Sequence[str], reported_nan: bool) -> str:
    """Why a trial failed, in words that group alike failures: out of memory, NaN, the last
    traceback line, or the exit code."""
    if any(_OOM.search(line) for line in log_tail) or exit_code in (137, -9):
        return "out of memory"
    if reported_nan or any("nan" in line.lower().split() for line in log_tail):
        return "NaN"
    for line in reversed(log_tail):
        match = _ERROR_LINE.match(line)
        if match:
            return match[1][:200]
    if exit_code is not None:
        return f"exit code {exit_code}"
    return "failed"


def objective_missing(running_since_ms: int | None, now_ms: int, has_objective: bool, grace_s: int) -> bool:
    """A running trial that has gone `grace_s` seconds without reporting the objective."""
    return running_since_ms is not None and not has_objective and now_ms - running_since_ms >= grace_s * 1000
