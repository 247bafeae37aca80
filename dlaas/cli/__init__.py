"""dlaas: the command line of the deep-learning training service.

Heavy imports (grpc, protobuf, rich) happen inside the commands, so `dlaas --help` is instant.
Each subject has its module; importing it registers its verbs on the `cli` group.
"""

from __future__ import annotations

from dlaas.cli import cluster, connections, data, platform_cmds, runs, usage
from dlaas.cli.app import cli

__all__ = ["cli", "cluster", "connections", "data", "main", "platform_cmds", "runs", "usage"]


def main() -> None:
    cli(prog_name="dlaas")
