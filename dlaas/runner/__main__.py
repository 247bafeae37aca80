"""``python -m dlaas.runner JOB_DIR/runner.json``: run one attempt; exit 0 once its end was reported."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dlaas.runner.config import ConfigError, RunnerConfig

USAGE = "usage: python -m dlaas.runner JOB_DIR/runner.json | --standby"


def standby() -> str | None:
    """A warm runner: imports done, it waits for the path of its runner.json on stdin.

    The local backend keeps one ready so that a run's command starts without paying for Python's
    start and imports. EOF on stdin (the scheduler went away) ends it without running anything.
    """
    import os

    import grpc  # noqa: F401 - the slow imports, done while waiting

    from dlaas.runner import runner  # noqa: F401

    line = sys.stdin.readline().strip()
    if not line:
        return None
    job_dir = Path(line).parent
    log = os.open(job_dir / "runner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(job_dir)
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--standby"]:
        path = standby()
        if path is None:
            return 0
        args = [path]
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 0 if args in (["-h"], ["--help"]) else 2
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config_path = Path(args[0])
    try:
        config = RunnerConfig.load(config_path)
    except ConfigError as exc:
        print(f"dlaas.runner: {exc}", file=sys.stderr)
        return 1

    from dlaas.runner.runner import Runner  # after the config is known good: grpc is the slow import

    return Runner(config, config_path=config_path).run()


if __name__ == "__main__":
    sys.exit(main())
