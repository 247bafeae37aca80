"""dlaas: the command line of the deep-learning training service.

Heavy imports (grpc, protobuf, rich) happen inside the commands, so `dlaas --help` is instant.
Each subject has its module; importing it registers its verbs on the `cli` group.
"""

from __future__ import annotations

from dlaas.cli import accounts, cluster, connections, data, experiments, platform_cmds, runs, usage
from dlaas.cli.app import cli

__all__ = [
    "accounts",
    "cli",
    "cluster",
    "connections",
    "data",
    "experiments",
    "main",
    "platform_cmds",
    "runs",
    "usage",
]


def main() -> None:
    cli(prog_name="dlaas")
