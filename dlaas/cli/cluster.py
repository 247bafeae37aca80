"""The GPUs and the queue: `dlaas queue`, `dlaas nodes`, and the operators' `dlaas admin`."""

from __future__ import annotations

from typing import Any

import click

from dlaas.cli.app import OUTPUT, cli


def _cluster() -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import cluster_pb2_grpc

    return cluster_pb2_grpc.ClusterServiceStub(channel())


def _admin() -> Any:
    from dlaas.cli.client import channel
    from dlaas.gateway.v1 import cluster_pb2_grpc

    return cluster_pb2_grpc.AdminServiceStub(channel(admin=True))


@cli.command()
@OUTPUT
def queue(output: str) -> None:
    """Your queued runs: position, why each waits, and when it should start where known."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import cluster_pb2

    try:
        response = _cluster().ListQueue(cluster_pb2.ListQueueRequest(page_size=1000))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(response)
        return
    rows = [
        [
            e.position,
            e.run.rsplit("/", 1)[-1],
            e.display_name,
            e.gpus,
            e.gpu_type or "any",
            render.when(e.estimated_start_time) if e.HasField("estimated_start_time") else "-",
            e.wait_reason,
        ]
        for e in response.entries
    ]
    if not rows:
        click.echo("no queued runs")
        return
    render.table(["POS", "RUN", "NAME", "GPUS", "TYPE", "ESTIMATED START", "WAITING FOR"], rows)


def _node_rows(nodes: Any) -> list[list[object]]:
    return [[n.name, n.gpu_type, n.gpu_count, n.gpus_in_use, "yes" if n.schedulable else "drained"] for n in nodes]


@cli.command()
@OUTPUT
def nodes(output: str) -> None:
    """The nodes, their GPUs and how many are in use."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import cluster_pb2

    try:
        response = _cluster().ListNodes(cluster_pb2.ListNodesRequest())
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(response)
        return
    render.table(["NODE", "GPU TYPE", "GPUS", "IN USE", "SCHEDULABLE"], _node_rows(response.nodes))


@cli.group()
def admin() -> None:
    """Operator actions (they need an admin key): accounts and their tiers, draining nodes."""


@admin.group("accounts")
def admin_accounts() -> None:
    """Accounts."""


@admin_accounts.command("set-tier")
@click.argument("account")
@click.argument("tier")
@OUTPUT
def set_tier(account: str, tier: str, output: str) -> None:
    """Put ACCOUNT on TIER (free, standard, premium, ...); the scheduler applies it at its next decision."""
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import cluster_pb2

    name = account if account.startswith("accounts/") else f"accounts/{account}"
    try:
        result = _admin().SetAccountTier(cluster_pb2.SetAccountTierRequest(account=name, tier=tier))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(result)
    else:
        click.echo(f"{result.account} is on tier {result.tier}: {result.max_gpus} GPU(s) at once")


@admin.group("nodes")
def admin_nodes() -> None:
    """Nodes."""


def _drain(node: str, drained: bool, output: str) -> None:
    import grpc

    from dlaas.cli import render
    from dlaas.cli.client import fail
    from dlaas.gateway.v1 import cluster_pb2

    try:
        if drained:
            result = _admin().DrainNode(cluster_pb2.DrainNodeRequest(name=node))
        else:
            result = _admin().UndrainNode(cluster_pb2.UndrainNodeRequest(name=node))
    except grpc.RpcError as exc:
        fail(exc)
    if output == "json":
        render.emit_json(result)
    else:
        state = "schedulable" if result.schedulable else "drained: running runs finish, no new ones start"
        click.echo(f"{result.name}: {state}")


@admin_nodes.command("drain")
@click.argument("node")
@OUTPUT
def drain(node: str, output: str) -> None:
    """Stop placing runs on NODE; its running runs finish."""
    _drain(node, True, output)


@admin_nodes.command("undrain")
@click.argument("node")
@OUTPUT
def undrain(node: str, output: str) -> None:
    """Let NODE take runs again."""
    _drain(node, False, output)
