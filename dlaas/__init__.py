"""dlaas: the CLI, the runner and the client libraries. Training code imports only `report`
(`from dlaas import report`), which needs nothing but the standard library."""

from dlaas.report import report

__all__ = ["report"]
