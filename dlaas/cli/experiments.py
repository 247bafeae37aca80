"""Experiments (hyperparameter searches) and metrics: experiment create|show|ls|extend|cancel|plot,
metrics, watch."""

from __future__ import annotations

import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click

from dlaas.cli.app import cli
from dlaas.cli.runs import _pack, _read_manifest

FORMATS = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def _experiments() -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import experiments_pb2_grpc

    return experiments_pb2_grpc.ExperimentServiceStub(channel())


def _metrics() -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import experiments_pb2_grpc

    return experiments_pb2_grpc.MetricsServiceStub(channel())


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def _state_name(experiment: Any) -> str:
    from dlaas.gateway.v1 import experiments_pb2

    return experiments_pb2.ExperimentState.Name(experiment.state).removeprefix("EXPERIMENT_STATE_")


def _goal(experiment: Any) -> str:
    from dlaas.gateway.v1 import experiments_pb2

    return experiments_pb2.ObjectiveGoal.Name(experiment.objective_goal).removeprefix("OBJECTIVE_GOAL_").lower()


@cli.group()
def experiment() -> None:
    """Hyperparameter searches: many runs of one manifest, each with its own parameters.

    \b
    A manifest with an `experiment:` section (see docs/experiments.md):
      experiment:
        method: random            # grid, random or asha
        objective: {metric: accuracy, goal: maximize}
        max_runs: 20
        max_parallel_runs: 2
        parameters:
          lr: {type: double, min: 0.0001, max: 0.1, scale: log}
          hidden: {type: int, min: 16, max: 256}
          batch: {values: [32, 64, 128]}
    The command receives them as ${lr}, ${hidden}, … and as JSON in $DLAAS_HPARAMS_FILE.
    """


@experiment.command("create")
@click.argument("manifest")
@click.option("--code", "code_dir", type=click.Path(path_type=Path), help="Directory of model code to send.")
@click.option("--request-id", default=None, help="Idempotency key (default: a new one).")
@click.option("--validate", is_flag=True, help="Check the manifest and its search space only.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def create(manifest: str, code_dir: Path | None, request_id: str | None, validate: bool, output: str) -> None:
    """Start an experiment described by MANIFEST."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    request = experiments_pb2.CreateExperimentRequest(
        manifest=_read_manifest(manifest),
        code_archive=_pack(code_dir) if code_dir and not validate else b"",
        request_id=request_id or uuid.uuid4().hex,
        validate_only=validate,
    )
    try:
        created = _experiments().CreateExperiment(request)
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json" or validate:
        render.emit_json(created)
        return
    click.echo(f"{_short(created.name)} {_state_name(created)} ({created.method}, {created.max_runs} runs)")


@experiment.command("ls")
@click.option("--limit", default=50, show_default=True, help="At most this many experiments.")
@FORMATS
def list_experiments(limit: int, output: str) -> None:
    """List your experiments, newest first."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    try:
        response = _experiments().ListExperiments(experiments_pb2.ListExperimentsRequest(page_size=limit))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(response)
        return
    headers = ["EXPERIMENT", "NAME", "METHOD", "STATE", "RUNS", "OBJECTIVE", "BEST", "BEST RUN", "CREATED"]
    rows = [
        [
            _short(e.name),
            e.display_name,
            e.method,
            _state_name(e),
            f"{e.trial_count}/{e.max_runs}",
            f"{e.objective_metric} ({_goal(e)})",
            _number(e.best_value) if e.HasField("best_value") else "-",
            _short(e.best_run) if e.best_run else "-",
            render.when(e.create_time),
        ]
        for e in response.experiments
    ]
    _emit(headers, rows, output)


def _emit(headers: list[str], rows: list[list[Any]], output: str) -> None:
    from dlaas.cli import render

    if output == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow([h.lower().replace(" ", "_") for h in headers])
        writer.writerows(rows)
        return
    render.table(headers, rows)


def _trial_rows(found: Any, *, live: bool = False) -> tuple[list[str], list[list[Any]]]:
    from dlaas.cli import render
    from dlaas.types.v1 import run_pb2

    names = sorted({key for t in found.trials for key in t.parameters})
    metric = found.objective_metric
    headers = ["TRIAL", "RUN", "STATE", metric.upper(), "STEP", *[n.upper() for n in names]]
    headers += ["QUEUE", "GPU", "ELAPSED", "LATEST"] if live else ["DETAIL"]
    rows: list[list[Any]] = []
    now_ms = time.time() * 1000
    for t in found.trials:
        detail = ""
        if t.termination_reason and t.termination_reason != run_pb2.TERMINATION_REASON_SUCCEEDED:
            detail = render.reason(t.termination_reason)
        if t.failure_cause:
            detail = f"{detail}: {t.failure_cause}" if detail else t.failure_cause
        if t.objective_missing:
            detail = (detail + "; " if detail else "") + f"no {metric} reported"
        if t.retry_of:
            detail = (detail + "; " if detail else "") + f"retries trial {t.retry_of}"
        row: list[Any] = [
            t.index,
            _short(t.run),
            render.state(t.state),
            _number(t.objective_value) if t.HasField("objective_value") else "-",
            t.objective_step if t.HasField("objective_value") else "-",
            *[t.parameters.get(n, "") for n in names],
        ]
        if live:
            start = t.start_time.ToMilliseconds() if t.start_time.seconds else 0
            end = t.end_time.ToMilliseconds() if t.end_time.seconds else now_ms
            latest = " ".join(f"{k}={_number(v)}" for k, v in sorted(t.latest_metrics.items()))
            row += [t.queue_position or "", t.gpus, f"{(end - start) / 1000:.0f}s" if start else "", latest]
        else:
            row.append(detail)
        rows.append(row)
    return headers, rows


@experiment.command("show")
@click.argument("experiment_name", metavar="EXPERIMENT")
@FORMATS
def show(experiment_name: str, output: str) -> None:
    """Show an experiment: its trials best first, with their parameters; failures grouped by cause."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    try:
        found = _experiments().GetExperiment(experiments_pb2.GetExperimentRequest(name=experiment_name))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(found)
        return
    headers, rows = _trial_rows(found)
    if output == "csv":
        _emit(headers, rows, "csv")
        return
    click.echo(f"Experiment: {found.name} ({found.display_name})")
    click.echo(f"Method:     {found.method}; objective {found.objective_metric} ({_goal(found)})")
    click.echo(f"State:      {_state_name(found)}{': ' + found.message if found.message else ''}")
    click.echo(f"Runs:       {found.trial_count} of {found.max_runs}, {found.max_parallel_runs} at a time")
    if found.best_run:
        click.echo(f"Best:       {_short(found.best_run)} {found.objective_metric}={_number(found.best_value)}")
    render.table(headers, rows)
    if found.failure_groups:
        click.echo("Failures by cause:")
        for group in found.failure_groups:
            click.echo(f"  {len(group.runs)} × {group.cause}: {', '.join(_short(r) for r in group.runs)}")


@experiment.command("extend")
@click.argument("experiment_name", metavar="EXPERIMENT")
@click.option("--runs", type=click.IntRange(min=1), required=True, help="Trials to add.")
@click.option("--request-id", default=None, help="Idempotency key (default: a new one).")
def extend(experiment_name: str, runs: int, request_id: str | None) -> None:
    """Add trials to an experiment, finished or not; its trials and their ids are kept."""
    import grpc

    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    request = experiments_pb2.ExtendExperimentRequest(
        name=experiment_name, runs=runs, request_id=request_id or uuid.uuid4().hex
    )
    try:
        found = _experiments().ExtendExperiment(request)
    except grpc.RpcError as exc:
        fail(exc)
    click.echo(f"{_short(found.name)} {_state_name(found)} ({found.max_runs} runs)")


@experiment.command("cancel")
@click.argument("experiment_name", metavar="EXPERIMENT")
def cancel(experiment_name: str) -> None:
    """Stop an experiment: no new trials; its live runs are cancelled."""
    import grpc

    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    try:
        found = _experiments().CancelExperiment(experiments_pb2.CancelExperimentRequest(name=experiment_name))
    except grpc.RpcError as exc:
        fail(exc)
    click.echo(f"{_short(found.name)} {_state_name(found)}")


@experiment.command("plot")
@click.argument("experiment_name", metavar="EXPERIMENT")
@click.option("--metric", default=None, help="Metric to plot (default: the objective).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Image file: .png or .svg.")
def plot(experiment_name: str, metric: str | None, out: Path) -> None:
    """Draw each trial's curve of a metric over its steps."""
    import grpc

    from dlaas.cli import charts
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    if out.suffix.lower() not in (".png", ".svg"):
        raise click.BadParameter("must end in .png or .svg", param_hint="--out")
    try:
        found = _experiments().GetExperiment(experiments_pb2.GetExperimentRequest(name=experiment_name))
        metric = metric or found.objective_metric
        series: dict[str, list[tuple[float, float]]] = {}
        stub = _metrics()
        for trial in found.trials:
            response = stub.ListRunMetrics(experiments_pb2.ListRunMetricsRequest(name=trial.run, metrics=[metric]))
            points = [(float(p.step), p.value) for p in response.points if math.isfinite(p.value)]
            if points:
                series[_short(trial.run)] = points
    except grpc.RpcError as exc:
        fail(exc)
    if not series:
        raise click.ClickException(f"no trial of {_short(found.name)} reported {metric}")
    charts.write(out, series, title=f"{found.display_name}: {metric}", x_label="step", y_label=metric)
    click.echo(f"wrote {out} ({len(series)} trials)")


@cli.command()
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new points until the run ends.")
@click.option("--metric", "names", multiple=True, help="Only this metric (repeatable).")
@FORMATS
def metrics(run: str, follow: bool, names: tuple[str, ...], output: str) -> None:
    """Print a run's metrics: one line per point, with its step and time."""
    import csv
    import json

    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import experiments_pb2

    writer = csv.writer(sys.stdout)
    if output == "csv":
        writer.writerow(["time", "step", "metric", "value"])
    elif output == "table":
        click.echo(f"{'TIME':<23}  {'STEP':>6}  {'METRIC':<20}  VALUE")
    try:
        stream = _metrics().StreamRunMetrics(experiments_pb2.StreamRunMetricsRequest(name=run, follow=follow))
        for response in stream:
            for point in response.points:
                if names and point.name not in names:
                    continue
                when = render.when(point.time)
                if output == "json":
                    click.echo(
                        json.dumps({"time": when, "step": point.step, "metric": point.name, "value": point.value})
                    )
                elif output == "csv":
                    writer.writerow([when, point.step, point.name, _number(point.value)])
                else:
                    click.echo(f"{when:<23}  {point.step:>6}  {point.name:<20}  {_number(point.value)}")
            sys.stdout.flush()
    except grpc.RpcError as exc:
        fail(exc)


@cli.command()
@click.argument("experiment_name", metavar="[EXPERIMENT]", required=False)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between updates.")
def watch(experiment_name: str | None, interval: float) -> None:
    """A live table, updated in place: an experiment's trials (state, queue position, GPU, elapsed,
    latest metrics, best so far), or without EXPERIMENT your runs. Ctrl-C stops watching."""
    import grpc
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from dlaas.cli import render
    from dlaas.cli.client import fail, stub
    from dlaas.gateway.v1 import experiments_pb2, gateway_pb2
    from dlaas.runner.state import TERMINAL_STATES
    from dlaas.types.v1 import run_pb2

    def frame() -> tuple[Group, bool, str]:
        if experiment_name:
            found = _experiments().GetExperiment(experiments_pb2.GetExperimentRequest(name=experiment_name))
            headers, rows = _trial_rows(found, live=True)
            best = (
                f"best {_short(found.best_run)} {found.objective_metric}={_number(found.best_value)}"
                if found.best_run
                else "no best yet"
            )
            title = f"{_short(found.name)} {_state_name(found)} {found.trial_count}/{found.max_runs} runs; {best}"
            done = found.state != experiments_pb2.EXPERIMENT_STATE_RUNNING
        else:
            runs = stub().ListRuns(gateway_pb2.ListRunsRequest(page_size=50)).runs
            headers = ["RUN", "NAME", "STATE", "QUEUE", "GPU", "ELAPSED"]
            rows = []
            now_ms = time.time() * 1000
            for r in runs:
                running = [
                    t.time.ToMilliseconds() for t in r.status.transitions if t.state == run_pb2.RUN_STATE_RUNNING
                ]
                ended = [t.time.ToMilliseconds() for t in r.status.transitions if t.state in TERMINAL_STATES]
                elapsed = f"{((ended[-1] if ended else now_ms) - running[-1]) / 1000:.0f}s" if running else ""
                gpus = ",".join(map(str, r.status.placement.gpu_indices)) if r.status.placement.node else ""
                rows.append(
                    [
                        _short(r.name),
                        r.spec.display_name,
                        render.state(r.status.state),
                        r.status.queue_position or "",
                        gpus,
                        elapsed,
                    ]
                )
            title, done = f"{len(runs)} runs", False
        table = Table(box=None, header_style="bold", pad_edge=False)
        for header in headers:
            table.add_column(header, no_wrap=True)
        for row in rows:
            table.add_row(*[str(cell) for cell in row])
        key = repr((title, [row[:3] + row[4:5] for row in rows]))  # what changed, elapsed time aside
        return Group(Text(title, style="bold"), table), done, key

    console = Console()
    if not console.is_terminal:
        console = Console(width=250)  # pipes and files get whole lines
    try:
        if not console.is_terminal:  # a pipe or a file: a new table each time something changed
            last = ""
            while True:
                view, done, key = frame()
                if key != last:
                    console.print(view)
                    sys.stdout.flush()
                    last = key
                if done:
                    break
                time.sleep(interval)
            return
        with Live(console=console, auto_refresh=False) as live:
            while True:
                view, done, _ = frame()
                live.update(view, refresh=True)
                if done:
                    break
                time.sleep(interval)
    except grpc.RpcError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass
