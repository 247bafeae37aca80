"""dlaas up, down, status: the embedded default on this machine."""

from __future__ import annotations

import sys

import click

from dlaas.cli.app import OUTPUT, cli


@cli.command()
def up() -> None:
    """Start the four services on this machine (data under DLAAS_HOME)."""
    from dlaas import platform

    try:
        started = platform.up()
    except platform.PlatformError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"dlaas is up in {platform.home()}; gateway at {started['api_gateway'].address}")


@cli.command()
def down() -> None:
    """Stop the services started by `dlaas up` (runs' runners keep going)."""
    from dlaas import platform

    stopped = platform.down()
    click.echo(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")


@cli.command()
@OUTPUT
def status(output: str) -> None:
    """Show the services of the local platform and whether they answer."""
    from dlaas import platform
    from dlaas.cli import render
    from dlaas.procs import alive

    state = platform.read_state()
    rows = [
        {
            "service": p.name,
            "pid": p.pid,
            "address": p.address,
            "metrics": f"http://127.0.0.1:{p.metrics_port}/metrics",
            "state": "serving" if alive(p.pid) and platform.healthy(p.address) else "down",
        }
        for p in state.values()
    ]
    if output == "json":
        render.emit_json({"home": str(platform.home()), "services": rows})
    elif not rows:
        click.echo(f"dlaas is not running (home {platform.home()}); start it with `dlaas up`")
    else:
        render.table(["SERVICE", "PID", "ADDRESS", "METRICS", "STATE"], [list(r.values()) for r in rows])
    if rows and any(r["state"] != "serving" for r in rows):
        sys.exit(1)
