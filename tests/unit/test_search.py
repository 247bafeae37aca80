"""The search logic of experiments: space, sampling, grid, ASHA decisions, best trial, manifests."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.api_gateway.domain import search
from services.api_gateway.domain.experiments import (
    config_from_json,
    failure_cause,
    objective_missing,
    parse_experiment,
)
from services.common.errors import InvalidArgument

SPACE = search.Space(
    (
        search.Double("lr", 1e-4, 1e-1, log=True),
        search.Integer("hidden", 16, 256, log=True),
        search.Categorical("batch", (32, 64, 128)),
        search.Double("dropout", 0.0, 0.5),
    )
)


@given(seed=st.integers(0, 2**31), trial=st.integers(1, 10_000))
def test_random_samples_stay_in_range_and_repeat_for_the_same_seed_and_trial(seed: int, trial: int) -> None:
    drawn = search.sample(SPACE, seed, trial)
    assert drawn == search.sample(SPACE, seed, trial)
    assert 1e-4 <= float(drawn["lr"]) <= 1e-1
    assert isinstance(drawn["hidden"], int) and 16 <= drawn["hidden"] <= 256
    assert drawn["batch"] in (32, 64, 128)
    assert 0.0 <= float(drawn["dropout"]) <= 0.5


def test_log_scale_samples_spread_over_the_decades() -> None:
    values = [float(search.sample(SPACE, 7, t)["lr"]) for t in range(1, 401)]
    decades = {math.floor(math.log10(v)) for v in values}
    assert decades == {-4, -3, -2}  # uniform on a log scale, not crowded near 0.1


def test_grid_enumerates_every_combination_once_in_order() -> None:
    space = search.Space(
        (
            search.Double("lr", 0.001, 0.1, log=True, steps=3),
            search.Integer("layers", 1, 2),
            search.Categorical("opt", ("sgd", "adam")),
        )
    )
    assert search.grid_size(space) == 12
    points = [search.grid_point(space, i) for i in range(1, 13)]
    assert points == search.grid(space)
    assert points[0] == {"lr": 0.001, "layers": 1, "opt": "sgd"}
    assert points[1] == {"lr": 0.001, "layers": 1, "opt": "adam"}
    assert [p["lr"] for p in points[::4]] == pytest.approx([0.001, 0.01, 0.1])
    with pytest.raises(IndexError):
        search.grid_point(space, 13)


@given(low=st.integers(-50, 50), span=st.integers(0, 100), steps=st.integers(0, 12))
def test_integer_grid_axes_have_no_repeats_and_stay_in_range(low: int, span: int, steps: int) -> None:
    values = search.axis(search.Integer("n", low, low + span, steps=steps))
    assert len(values) == len(set(values))
    assert all(low <= int(v) <= low + span for v in values)


def test_substitution_replaces_parameters_and_leaves_shell_variables() -> None:
    command = "python train.py --lr ${lr} --hidden ${hidden} --out ${RESULT_DIR}"
    assert search.substitute(command, {"lr": 0.001, "hidden": 64}) == (
        "python train.py --lr 0.001 --hidden 64 --out ${RESULT_DIR}"
    )


def test_asha_rungs_grow_by_the_reduction_factor_below_the_max_step() -> None:
    assert search.Asha(1, 27, 3).rungs() == [1, 3, 9]
    assert search.Asha(2, 16, 2).rungs() == [2, 4, 8]


def test_asha_keeps_the_top_fraction_at_a_rung() -> None:
    asha = search.Asha(1, 27, 3)
    assert asha.continues(search.MAXIMIZE, [0.5], 0.5)  # the first to arrive always goes on
    assert not asha.continues(search.MAXIMIZE, [0.9, 0.5], 0.5)
    assert asha.continues(search.MAXIMIZE, [0.5, 0.9], 0.9)
    assert asha.continues(search.MINIMIZE, [0.3, 0.2, 0.9], 0.2)
    assert not asha.continues(search.MINIMIZE, [0.3, 0.2, 0.9], 0.3)
    assert not asha.continues(search.MAXIMIZE, [0.3, float("nan")], float("nan"))


def test_a_trial_that_went_on_for_want_of_rivals_is_stopped_once_enough_arrive() -> None:
    asha = search.Asha(1, 27, 3)
    assert asha.continues(search.MAXIMIZE, [0.5], 0.5)  # first at the rung: goes on
    assert not asha.outranked(search.MAXIMIZE, [0.5, 0.9], 0.5)  # fewer than 3 values: no verdict yet
    assert asha.outranked(search.MAXIMIZE, [0.5, 0.9, 0.7], 0.5)  # 3 values, top third is 0.9 alone
    assert not asha.outranked(search.MAXIMIZE, [0.5, 0.4, 0.3], 0.5)  # still the best
    assert asha.outranked(search.MINIMIZE, [0.2, 0.1, 0.3, float("nan")], 0.2)  # NaN is no rival
    assert not asha.outranked(search.MINIMIZE, [0.2, 0.1, float("nan")], 0.2)


@given(values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), factor=st.integers(2, 5))
def test_asha_lets_about_one_in_factor_go_on_and_always_the_best(values: list[float], factor: int) -> None:
    asha = search.Asha(1, 100, factor)
    going_on = [v for v in values if asha.continues(search.MAXIMIZE, values, v)]
    assert max(values) in going_on
    keep = max(1, len(values) // factor)
    assert len(going_on) >= keep
    assert all(v >= sorted(values, reverse=True)[keep - 1] for v in going_on)


def test_crossed_rungs_record_the_first_value_at_or_beyond_each_rung() -> None:
    asha = search.Asha(1, 27, 3)
    points = [(1, 0.2), (2, 0.3), (4, 0.5)]
    assert search.crossed_rungs(asha, points, {}) == {1: 0.2, 3: 0.5}
    assert search.crossed_rungs(asha, points, {1: 0.2}) == {3: 0.5}


def test_best_trial_ignores_missing_and_nan_and_prefers_the_earlier_on_ties() -> None:
    objectives = {1: 0.5, 2: None, 3: float("nan"), 4: 0.9, 5: 0.9}
    assert search.best_trial(search.MAXIMIZE, objectives) == 4
    assert search.best_trial(search.MINIMIZE, objectives) == 1
    assert search.best_trial(search.MAXIMIZE, {1: None}) is None
    assert search.ranked(search.MAXIMIZE, objectives) == [4, 5, 1, 2, 3]


SECTION = {
    "method": "asha",
    "objective": {"metric": "accuracy", "goal": "maximize"},
    "max_runs": 20,
    "max_parallel_runs": 2,
    "parameters": {
        "lr": {"type": "double", "min": 0.0001, "max": 0.1, "scale": "log"},
        "hidden": {"type": "int", "min": 16, "max": 128},
        "batch": {"values": [32, 64]},
    },
    "asha": {"min_step": 1, "max_step": 9, "reduction_factor": 3},
}


def test_experiment_section_parses_and_survives_its_json_form() -> None:
    config = parse_experiment(SECTION)
    assert (config.method, config.metric, config.goal, config.max_runs) == ("asha", "accuracy", "maximize", 20)
    assert config.asha == search.Asha(1, 9, 3)
    assert config_from_json(config.to_json()) == config
    assert config.parameters(3) == search.sample(config.space, 0, 3)


def test_grid_max_runs_default_to_the_grid_size() -> None:
    section = {k: v for k, v in SECTION.items() if k != "max_runs"}
    config = parse_experiment({**section, "method": "grid", "parameters": {"a": {"values": [1, 2, 3]}}})
    assert config.max_runs == 3


def test_every_problem_in_the_section_is_named_by_its_path() -> None:
    bad = {
        "method": "bayes",
        "objective": {"metric": "acc", "goal": "up"},
        "max_parallel_runs": 0,
        "parameters": {"lr": {"type": "double", "min": 0, "max": 1, "scale": "log"}, "n": {"type": "int", "min": 5}},
        "surprise": 1,
    }
    with pytest.raises(InvalidArgument) as raised:
        parse_experiment(bad)
    fields = {v.field for v in raised.value.violations}
    assert {
        "experiment.method",
        "experiment.objective.goal",
        "experiment.max_parallel_runs",
        "experiment.parameters.lr.min",
        "experiment.parameters.n.max",
        "experiment.surprise",
        "experiment.max_runs",
    } <= fields


def test_missing_section_is_refused() -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_experiment(None)
    assert raised.value.violations[0].field == "experiment"


def test_failures_are_grouped_by_cause() -> None:
    assert failure_cause(1, ["RuntimeError: CUDA out of memory. Tried to allocate"], False) == "out of memory"
    assert failure_cause(137, [], False) == "out of memory"
    assert failure_cause(1, ["loss is nan"], False) == "NaN"
    assert failure_cause(1, ["step 3"], True) == "NaN"
    tail = ["Traceback (most recent call last):", '  File "t.py", line 1', "ValueError: bad shape (3, 4)"]
    assert failure_cause(1, tail, False) == "ValueError: bad shape (3, 4)"
    assert failure_cause(2, ["usage: t.py"], False) == "exit code 2"


def test_a_run_without_its_objective_is_flagged_after_the_grace_period() -> None:
    assert not objective_missing(None, 10_000_000, False, 120)
    assert not objective_missing(0, 119_000, False, 120)
    assert objective_missing(0, 120_000, False, 120)
    assert not objective_missing(0, 600_000, True, 120)


def test_the_digits_sweep_example_is_a_valid_experiment_whose_trials_train_py_accepts() -> None:
    import yaml

    from services.api_gateway.domain.experiments import split_manifest
    from services.api_gateway.domain.manifest import parse_manifest

    root = Path(__file__).resolve().parents[2]
    document = yaml.safe_load((root / "examples/digits-sweep/manifest.yml").read_text())
    training, section = split_manifest(document)
    spec = parse_manifest(yaml.safe_dump(training), frameworks={"pytorch": []}).spec
    config = parse_experiment(section)
    assert config.method == "asha" and config.asha.rungs() == [10, 30, 90, 270, 810]
    for trial in range(1, config.max_runs + 1):
        command = search.substitute(spec.command, config.parameters(trial))
        match = re.fullmatch(
            r"python train.py --epochs (\d+) --lr ([\d.e-]+) --hidden (\d+) --batch-size (\d+)", command
        )
        assert match, command
        epochs, lr, hidden, batch = int(match[1]), float(match[2]), int(match[3]), int(match[4])
        assert 300 <= epochs <= 2000 and 3e-4 <= lr <= 0.3 and 4 <= hidden <= 256 and batch in (16, 32, 64, 128)
