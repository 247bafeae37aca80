"""Experiments through the real services: a random sweep, ASHA's early stops, retries, extension."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from dlaas.gateway.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.types.v1 import run_pb2
from tests.support import Platform, create_account, gateway_channel, start_gateway

pytestmark = pytest.mark.e2e

DLAAS = str(Path(sys.executable).parent / "dlaas")

TERMINAL = {
    experiments_pb2.EXPERIMENT_STATE_COMPLETED,
    experiments_pb2.EXPERIMENT_STATE_FAILED,
    experiments_pb2.EXPERIMENT_STATE_CANCELLED,
}


def experiment_manifest(command: str, section: str, name: str = "sweep") -> str:
    return textwrap.dedent(
        f"""\
            name: {name}
            framework: {{name: python}}
            command: {json.dumps(command)}
            resources: {{gpus: 1}}
            results: {{bucket: results}}
            experiment:
            """
    ) + textwrap.indent(textwrap.dedent(section), "  ")


async def create(stub: experiments_pb2_grpc.ExperimentServiceAsyncStub, text: str) -> experiments_pb2.Experiment:
    request = experiments_pb2.CreateExperimentRequest(manifest=text, request_id=uuid.uuid4().hex)
    created: experiments_pb2.Experiment = await stub.CreateExperiment(request)
    return created


async def finished(
    stub: experiments_pb2_grpc.ExperimentServiceAsyncStub, name: str, timeout: float = 120
) -> experiments_pb2.Experiment:
    async def poll() -> experiments_pb2.Experiment:
        while True:
            found: experiments_pb2.Experiment = await stub.GetExperiment(
                experiments_pb2.GetExperimentRequest(name=name)
            )
            if found.state in TERMINAL:
                return found
            await asyncio.sleep(0.2)

    return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def sweeper(platform: Platform) -> grpc.aio.Channel:
    """An account of the standard tier: both virtual GPUs of the platform are its to use."""
    return await platform.account_channel("sweeper", "standard")


# The objective peaks at x = 0.3; the command gets x by substitution and reads it from the JSON file too.
PEAK = (
    'python -c "import json, os, sys; x = float(sys.argv[1]); '
    "p = json.load(open(os.environ['DLAAS_HPARAMS_FILE'])); assert p['x'] == x; "
    "print(f'step=1 score={1 - (x - 0.3) ** 2:.6f}')\" ${x}"
)


async def test_a_20_run_random_sweep_on_2_slots_completes_and_names_its_best_run(sweeper: grpc.aio.Channel) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    section = """\
        method: random
        objective: {metric: score, goal: maximize}
        max_runs: 20
        max_parallel_runs: 2
        seed: 11
        parameters:
          x: {type: double, min: 0, max: 1}
    """
    created = await create(stub, experiment_manifest(PEAK, section))
    assert created.state == experiments_pb2.EXPERIMENT_STATE_RUNNING
    done = await finished(stub, created.name)

    assert done.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED, done.message
    assert len(done.trials) == 20
    assert all(t.state == run_pb2.RUN_STATE_COMPLETED for t in done.trials)
    scores = {t.run: t.objective_value for t in done.trials}
    best = max(scores, key=lambda run: scores[run])
    assert done.best_run == best and done.best_value == scores[best]
    assert done.trials[0].run == best  # trials come best first
    xs = {t.run: float(t.parameters["x"]) for t in done.trials}
    assert abs(xs[best] - 0.3) == min(abs(x - 0.3) for x in xs.values())
    assert len(set(xs.values())) == 20
    # Never more than two trials ran at once.
    events = sorted(
        [(t.start_time.ToMilliseconds(), 1) for t in done.trials]
        + [(t.end_time.ToMilliseconds(), -1) for t in done.trials]
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak <= 2

    # It grows after it finished: new trials continue the numbering and say which extension made them.
    extended = await stub.ExtendExperiment(
        experiments_pb2.ExtendExperimentRequest(name=created.name, runs=2, request_id="grow-1")
    )
    again = await stub.ExtendExperiment(
        experiments_pb2.ExtendExperimentRequest(name=created.name, runs=2, request_id="grow-1")
    )
    assert extended.max_runs == again.max_runs == 22
    grown = await finished(stub, created.name)
    assert grown.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED
    assert sorted(t.index for t in grown.trials) == list(range(1, 23))
    assert {t.extension for t in grown.trials if t.index > 20} == {1}
    assert {t.run for t in grown.trials if t.index <= 20} == set(scores)

    listed = await stub.ListExperiments(experiments_pb2.ListExperimentsRequest())
    assert [(e.name, e.trial_count) for e in listed.experiments] == [(created.name, 22)]


# Accuracy grows with the epoch, faster for a larger x; nine epochs, ASHA rungs at 1 and 3.
CLIMB = (
    'python -c "import sys, time; x = float(sys.argv[1])\n'
    "for epoch in range(1, 10):\n"
    "    print(f'epoch={epoch} accuracy={x * epoch / 9:.6f}', flush=True); time.sleep(0.3)\" ${x}"
)


async def test_asha_stops_losers_early_and_gives_their_slots_to_new_trials(sweeper: grpc.aio.Channel) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    section = """\
        method: asha
        objective: {metric: accuracy, goal: maximize}
        max_runs: 6
        max_parallel_runs: 2
        seed: 3
        parameters:
          x: {type: double, min: 0.1, max: 1}
        asha: {min_step: 1, max_step: 9, reduction_factor: 3}
    """
    created = await create(stub, experiment_manifest(CLIMB, section, name="asha"))
    done = await finished(stub, created.name)

    assert done.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED, done.message
    assert len(done.trials) == 6
    stopped = [t for t in done.trials if t.termination_reason == run_pb2.TERMINATION_REASON_EARLY_STOPPED]
    assert stopped, [(t.run, t.state, t.latest_metrics) for t in done.trials]
    runs = gateway_pb2_grpc.TrainingServiceStub(sweeper)
    for trial in stopped:
        run = await runs.GetRun(gateway_pb2.GetRunRequest(name=trial.run))
        assert run.status.state == run_pb2.RUN_STATE_CANCELLED
        assert run.status.termination_reason == run_pb2.TERMINATION_REASON_EARLY_STOPPED
        assert trial.objective_step < 9  # it did not train to the end
    best = next(t for t in done.trials if t.run == done.best_run)
    assert best.state == run_pb2.RUN_STATE_COMPLETED and best.objective_step == 9
    # A stopped trial's slot went to the next trial before the survivors finished.
    first_stop = min(t.end_time.ToMilliseconds() for t in stopped)
    last_end = max(t.end_time.ToMilliseconds() for t in done.trials)
    assert any(first_stop <= t.start_time.ToMilliseconds() < last_end for t in done.trials)
    # Every GPU is free again once the experiment is done.
    nodes = await cluster_pb2_grpc.ClusterServiceStub(sweeper).ListNodes(cluster_pb2.ListNodesRequest())
    assert sum(n.gpus_in_use for n in nodes.nodes) == 0


async def test_failed_trials_are_retried_and_grouped_by_cause(sweeper: grpc.aio.Channel) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    command = (
        'python -c "import sys\n'
        "if sys.argv[1] == 'crash': raise ValueError('bad shape (3, 4)')\n"
        "print('loss=0.25')\" ${mode}"
    )
    section = """\
        method: grid
        objective: {metric: loss, goal: minimize}
        max_parallel_runs: 2
        retries: 1
        parameters:
          mode: {values: [ok, crash]}
    """
    created = await create(stub, experiment_manifest(command, section, name="flaky"))
    done = await finished(stub, created.name)

    assert done.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED, done.message
    assert done.max_runs == 2 and len(done.trials) == 3
    ok = next(t for t in done.trials if t.parameters["mode"] == "ok")
    crashed = sorted((t for t in done.trials if t.parameters["mode"] == "crash"), key=lambda t: t.index)
    assert done.best_run == ok.run and done.best_value == 0.25
    assert [t.state for t in crashed] == [run_pb2.RUN_STATE_FAILED] * 2
    assert crashed[1].retry_of == crashed[0].index
    assert [(g.cause, sorted(g.runs)) for g in done.failure_groups] == [
        ("ValueError: bad shape (3, 4)", sorted(t.run for t in crashed))
    ]


async def test_too_many_failures_fail_the_experiment(sweeper: grpc.aio.Channel) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    section = """\
        method: random
        objective: {metric: loss, goal: minimize}
        max_runs: 5
        max_parallel_runs: 1
        max_failed_runs: 1
        retries: 0
        parameters:
          x: {type: int, min: 1, max: 3}
    """
    created = await create(stub, experiment_manifest("exit ${x}", section, name="doomed"))
    done = await finished(stub, created.name)
    assert done.state == experiments_pb2.EXPERIMENT_STATE_FAILED
    assert "max_failed_runs is 1" in done.message
    assert len(done.trials) == 2
    causes = {g.cause for g in done.failure_groups}
    assert causes and causes <= {"exit code 1", "exit code 2", "exit code 3"}
    assert sorted(r for g in done.failure_groups for r in g.runs) == sorted(t.run for t in done.trials)


async def test_a_trial_that_never_reports_its_objective_is_flagged_while_it_runs(
    sweeper: grpc.aio.Channel, tmp_path: Path
) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    gate = tmp_path / "go"
    command = f"python -c \"import pathlib, time\nwhile not pathlib.Path('{gate}').exists(): time.sleep(0.05)\""
    section = """\
        method: random
        objective: {metric: accuracy, goal: maximize}
        max_runs: 1
        objective_grace_s: 1
        parameters:
          x: {values: [1]}
    """
    created = await create(stub, experiment_manifest(command, section, name="silent"))

    async def flagged() -> experiments_pb2.Trial:
        while True:
            found = await stub.GetExperiment(experiments_pb2.GetExperimentRequest(name=created.name))
            if found.trials and found.trials[0].objective_missing:
                return found.trials[0]
            await asyncio.sleep(0.2)

    trial = await asyncio.wait_for(flagged(), 60)
    assert trial.state == run_pb2.RUN_STATE_RUNNING
    gate.touch()
    done = await finished(stub, created.name)
    assert "none reported accuracy" in done.message
    assert done.trials[0].objective_missing and not done.best_run


async def test_bad_manifests_are_refused_naming_the_field_and_nothing_is_stored(sweeper: grpc.aio.Channel) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    section = """\
        method: bayes
        objective: {metric: loss}
        parameters:
          lr: {type: double, min: 0.1, max: 0.01}
    """
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await create(stub, experiment_manifest("echo ${lr}", section))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "experiment.method" in (raised.value.details() or "")
    listed = await stub.ListExperiments(experiments_pb2.ListExperimentsRequest())
    assert not listed.experiments


async def test_another_accounts_experiment_is_not_found(platform: Platform, sweeper: grpc.aio.Channel) -> None:
    stub = experiments_pb2_grpc.ExperimentServiceStub(sweeper)
    section = """\
        objective: {metric: loss, goal: minimize}
        max_runs: 1
        parameters:
          x: {values: [1]}
    """
    created = await create(stub, experiment_manifest("echo loss=${x}", section))
    other = experiments_pb2_grpc.ExperimentServiceStub(platform.channel)
    for name in (created.name, created.name.rsplit("/", 1)[-1]):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.GetExperiment(experiments_pb2.GetExperimentRequest(name=name))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    await finished(stub, created.name)


def test_the_cli_runs_a_sweep_shows_it_as_csv_plots_it_and_prints_metrics(tmp_path: Path) -> None:
    """`dlaas up`, then the experiment verbs as a user types them, against the services as processes."""
    home = tmp_path / "home"
    env = {**os.environ, "DLAAS_HOME": str(home)}
    env.pop("DLAAS_ENDPOINT", None)
    env.pop("DLAAS_API_KEY", None)

    def dlaas(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DLAAS, *args], env=env, text=True, capture_output=True, check=check, timeout=120)

    manifest = tmp_path / "sweep.yml"
    manifest.write_text(
        experiment_manifest(
            'python -c "from dlaas import report\nfor s in (1, 2): report(step=s, loss=${lr} * s)"',
            """\
            method: grid
            objective: {metric: loss, goal: minimize}
            max_parallel_runs: 2
            parameters:
              lr: {type: double, min: 0.1, max: 0.3, steps: 3}
            """,
        )
    )
    try:
        dlaas("up")
        checked = json.loads(dlaas("experiment", "create", "--validate", str(manifest)).stdout)
        assert (checked["method"], checked["max_runs"]) == ("grid", 3)
        assert "experiments" not in dlaas("experiment", "ls", "-o", "json").stdout  # nothing stored
        created = dlaas("experiment", "create", str(manifest)).stdout
        experiment_id = created.split()[0]
        assert experiment_id.startswith("exp-") and "RUNNING" in created
        watched = dlaas("watch", experiment_id, "--interval", "0.2")  # returns once the experiment ended
        assert "COMPLETED" in watched.stdout

        rows = list(csv.DictReader(io.StringIO(dlaas("experiment", "show", experiment_id, "-o", "csv").stdout)))
        assert [row["lr"] for row in rows] == ["0.1", "0.2", "0.3"]  # best (lowest loss) first
        assert [row["loss"] for row in rows] == ["0.1", "0.2", "0.3"]
        assert all(row["state"] == "COMPLETED" for row in rows)
        shown = dlaas("experiment", "show", experiment_id).stdout
        assert f"Best:       {rows[0]['run']} loss=0.1" in shown
        assert experiment_id in dlaas("experiment", "ls").stdout

        printed = dlaas("metrics", rows[0]["run"], "-o", "csv").stdout.splitlines()
        assert printed[0] == "time,step,metric,value"
        assert [line.split(",")[1:] for line in printed[1:]] == [["1", "loss", "0.1"], ["2", "loss", "0.2"]]

        png, svg = tmp_path / "curves.png", tmp_path / "curves.svg"
        dlaas("experiment", "plot", experiment_id, "--metric", "loss", "--out", str(png))
        dlaas("experiment", "plot", experiment_id, "--out", str(svg))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert svg.read_text().count("<polyline") == 3

        refused = dlaas("experiment", "extend", experiment_id, "--runs", "1", check=False)
        assert refused.returncode == 1 and "runs: the grid has 3 points" in refused.stderr
    finally:
        dlaas("down", check=False)


def _gateway_database(databases: Any) -> str:
    """The URL of the database the platform's gateway was started on."""
    if databases.kind == "sqlite":
        return str(databases.url("gateway"))
    name = next(n for n in databases.created if n.startswith("dlaas_test_gateway_"))
    return str(databases.admin_url.rsplit("/", 1)[0] + "/" + name)


async def test_the_experiment_carries_on_after_the_gateway_restarts(platform: Platform, databases: Any) -> None:
    key = await create_account(platform.admin, "restarter", "standard")
    channel = gateway_channel(platform.gateway.address, key)
    stub = experiments_pb2_grpc.ExperimentServiceStub(channel)
    section = """\
        method: random
        objective: {metric: score, goal: maximize}
        max_runs: 4
        max_parallel_runs: 1
        parameters:
          x: {type: double, min: 0, max: 1}
    """
    command = "python -c \"import time; time.sleep(0.5); print('score=${x}')\""
    created = await create(stub, experiment_manifest(command, section, name="restart"))

    async def trials_started(count: int) -> None:
        while len((await stub.GetExperiment(experiments_pb2.GetExperimentRequest(name=created.name))).trials) < count:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(trials_started(2), 60)
    await channel.close()
    await platform.gateway.stop(0)
    platform.gateway = await start_gateway(
        databases,
        platform.scheduler.address,
        platform.storage.address,
        platform.metering.address,
        database_url=_gateway_database(databases),
    )
    channel = gateway_channel(platform.gateway.address, key)
    try:
        done = await finished(experiments_pb2_grpc.ExperimentServiceStub(channel), created.name)
        assert done.state == experiments_pb2.EXPERIMENT_STATE_COMPLETED, done.message
        assert sorted(t.index for t in done.trials) == [1, 2, 3, 4]
        assert all(t.state == run_pb2.RUN_STATE_COMPLETED and t.HasField("objective_value") for t in done.trials)
        runs = await gateway_pb2_grpc.TrainingServiceStub(channel).ListRuns(gateway_pb2.ListRunsRequest())
        assert sorted(r.name for r in runs.runs) == sorted(t.run for t in done.trials)  # nothing ran twice
    finally:
        await channel.close()
