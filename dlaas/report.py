"""Report metrics from training code: ``from dlaas import report; report(step=3, loss=0.25)``.

Dependency-free on purpose (the training environment may not have dlaas's dependencies): it
prints one marked JSON line to stdout, which the runner reads from the command's output. Printing
``loss=0.25 accuracy=0.9`` lines works too. ``step`` (or ``epoch``) is the step of the values.
"""

from __future__ import annotations

import json
import sys

MARKER = "@dlaas.report "


def report(**metrics: float) -> None:
    """Print the metrics as one line the runner picks up; values must be numbers."""
    values = {}
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {name} must be a number, got {type(value).__name__}")
        values[name] = float(value) if isinstance(value, float) else value
    line = MARKER + json.dumps(values, allow_nan=True, separators=(",", ":"))
    print(line, file=sys.stdout, flush=True)
