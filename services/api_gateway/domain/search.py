"""Hyperparameter search: the space, its sampling and grid, ASHA's rungs and stop decisions,
and which trial is best. Pure: no I/O, no clock; every draw is a function of (seed, trial).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Value = int | float | str | bool

MAXIMIZE = "maximize"
MINIMIZE = "minimize"


@dataclass(frozen=True)
class Double:
    name: str
    low: float
    high: float
    log: bool = False
    steps: int = 3  # grid points


@dataclass(frozen=True)
class Integer:
    name: str
    low: int
    high: int
    log: bool = False
    steps: int = 0  # grid points; 0: every integer in the range


@dataclass(frozen=True)
class Categorical:
    name: str
    values: tuple[Value, ...]


Parameter = Double | Integer | Categorical


@dataclass(frozen=True)
class Space:
    parameters: tuple[Parameter, ...]

    def names(self) -> list[str]:
        return [p.name for p in self.parameters]


# ---- random search ----------------------------------------------------------------------------


def sample(space: Space, seed: int, trial: int) -> dict[str, Value]:
    """The parameters of trial number `trial` (1-based) of a random search seeded with `seed`.

    Each trial draws from its own generator, so a restarted controller draws the same values
    and an extended experiment continues the sequence.
    """
    rng = random.Random(f"{seed}:{trial}")
    return {p.name: _draw(p, rng) for p in space.parameters}


def _draw(parameter: Parameter, rng: random.Random) -> Value:
    if isinstance(parameter, Categorical):
        return parameter.values[rng.randrange(len(parameter.values))]
    if isinstance(parameter, Double):
        if parameter.log:
            value = math.exp(rng.uniform(math.log(parameter.low), math.log(parameter.high)))
        else:
            value = rng.uniform(parameter.low, parameter.high)
        return min(parameter.high, max(parameter.low, _significant(value, 6)))
    if parameter.log:
        value = math.exp(rng.uniform(math.log(parameter.low), math.log(parameter.high + 1)))
        return min(parameter.high, max(parameter.low, math.floor(value)))
    return rng.randint(parameter.low, parameter.high)


# ---- grid search ------------------------------------------------------------------------------


def axis(parameter: Parameter) -> list[Value]:
    """The values a grid takes along one parameter, in order, without repeats."""
    if isinstance(parameter, Categorical):
        return list(parameter.values)
    if isinstance(parameter, Integer) and parameter.steps == 0:
        return list(range(parameter.low, parameter.high + 1))
    steps = max(1, parameter.steps)
    low, high = float(parameter.low), float(parameter.high)
    if steps == 1:
        points = [low]
    elif parameter.log:
        points = [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (steps - 1)) for i in range(steps)]
    else:
        points = [low + i * (high - low) / (steps - 1) for i in range(steps)]
    if isinstance(parameter, Integer):
        return list(dict.fromkeys(round(p) for p in points))
    points[0], points[-1] = low, high
    return list(dict.fromkeys(_significant(p, 12) for p in points))


def _significant(value: float, digits: int) -> float:
    """The value to `digits` significant digits: what a command line shows, and all a search needs."""
    return float(f"{value:.{digits}g}")


def grid_size(space: Space) -> int:
    return math.prod(len(axis(p)) for p in space.parameters)


def grid_point(space: Space, trial: int) -> dict[str, Value]:
    """Trial number `trial` (1-based) of the grid, the last parameter varying fastest."""
    axes = [axis(p) for p in space.parameters]
    size = math.prod(len(a) for a in axes)
    if not 1 <= trial <= size:
        raise IndexError(f"the grid has {size} points; there is no point {trial}")
    index = trial - 1
    values: list[Value] = []
    for values_of in reversed(axes):
        index, position = divmod(index, len(values_of))
        values.append(values_of[position])
    return dict(zip(space.names(), reversed(values), strict=True))


def grid(space: Space) -> list[dict[str, Value]]:
    return [dict(zip(space.names(), combo, strict=True)) for combo in itertools.product(*map(axis, space.parameters))]


# ---- substitution -----------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(value: Value) -> str:
    """A value as the command receives it: integers plainly, doubles in their shortest exact form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def substitute(text: str, parameters: Mapping[str, Value]) -> str:
    """`${name}` replaced by the parameter's value; other `${...}` (shell variables) are left alone."""
    return _PLACEHOLDER.sub(lambda m: render(parameters[m[1]]) if m[1] in parameters else m[0], text)


# ---- ASHA (asynchronous successive halving, the stopping variant) -------------------------------


@dataclass(frozen=True)
class Asha:
    """Rungs at min_step · reduction_factor^k below max_step. A trial reaching a rung continues
    only if its objective there is in the top 1/reduction_factor of every value recorded at that
    rung so far (its own included); otherwise it is stopped and its GPU freed."""

    min_step: int = 1
    max_step: int = 27
    reduction_factor: int = 3

    def rungs(self) -> list[int]:
        rungs, step = [], self.min_step
        while step < self.max_step:
            rungs.append(step)
            step *= self.reduction_factor
        return rungs

    def continues(self, goal: str, recorded: Sequence[float], value: float) -> bool:
        """Whether a trial whose value at a rung is `value` goes on; `recorded` holds the values of
        every trial at that rung, this one's included."""
        if math.isnan(value):
            return False
        ranked = sorted((v for v in recorded if not math.isnan(v)), reverse=goal == MAXIMIZE)
        keep = max(1, len(ranked) // self.reduction_factor)
        cutoff = ranked[keep - 1]
        return value >= cutoff if goal == MAXIMIZE else value <= cutoff

    def outranked(self, goal: str, recorded: Sequence[float], value: float) -> bool:
        """Whether a trial that went on from a rung with `value` has since fallen out of that rung's
        top 1/reduction_factor, now that at least reduction_factor trials have a value there.

        The asynchronous rule lets the first trials to reach a rung go on for want of rivals; this
        check, made again as rivals arrive, stops them as synchronous halving would have, at once
        rather than at the next rung."""
        counted = [v for v in recorded if not math.isnan(v)]
        return len(counted) >= self.reduction_factor and not self.continues(goal, counted, value)


def crossed_rungs(asha: Asha, points: Sequence[tuple[int, float]], recorded: Mapping[int, float]) -> dict[int, float]:
    """Rungs the trial's objective points (step, value), oldest first, reached that are not recorded
    yet, each with the value of the first point at or beyond it."""
    found: dict[int, float] = {}
    for rung in asha.rungs():
        if rung in recorded:
            continue
        for step, value in points:
            if step >= rung:
                found[rung] = value
                break
    return found


# ---- results ----------------------------------------------------------------------------------


def better(goal: str, a: float, b: float) -> bool:
    """Whether a is strictly better than b (NaN is never better)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if goal == MAXIMIZE else a < b


def best_value(goal: str, values: Sequence[float]) -> float | None:
    best: float | None = None
    for value in values:
        if best is None or better(goal, value, best):
            best = value
    return best


def best_trial(goal: str, objectives: Mapping[int, float | None]) -> int | None:
    """The trial with the best objective; ties go to the earlier trial; NaN never wins."""
    best: int | None = None
    for trial in sorted(objectives):
        value = objectives[trial]
        if value is None or math.isnan(value):
            continue
        current = objectives[best] if best is not None else None
        if current is None or better(goal, value, current):
            best = trial
    return best


def ranked(goal: str, objectives: Mapping[int, float | None]) -> list[int]:
    """Trials best first; those without an objective (or NaN) last, by number."""

    def key(trial: int) -> tuple[int, float, int]:
        value = objectives[trial]
        if value is None or math.isnan(value):
            return (1, 0.0, trial)
        return (0, -value if goal == MAXIMIZE else value, trial)

    return sorted(objectives, key=key)
