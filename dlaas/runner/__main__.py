"""``python -m dlaas.runner JOB_DIR/runner.json``: run one attempt; exit 0 once its end was reported."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dlaas.runner.config import ConfigError, RunnerConfig

USAGE = "usage: python -m dlaas.runner JOB_DIR/runner.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 0 if args in (["-h"], ["--help"]) else 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = RunnerConfig.load(Path(args[0]))
    except ConfigError as exc:
        print(f"dlaas.runner: {exc}", file=sys.stderr)
        return 1

    from dlaas.runner.runner import Runner  # after the config is known good: grpc is the slow import

    return Runner(config).run()


if __name__ == "__main__":
    sys.exit(main())
