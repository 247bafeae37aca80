"""One attempt of one run on a learner: stage, run the command, upload, report.

See DESIGN.md, "The life of a run". Each state is written to JOB_DIR/state.json before it is
reported (a restarted scheduler reconciles from that file), and the terminal state is reported
only after the upload has finished, since billing stops there.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dlaas import transfer, transfer_s3
from dlaas.runner import staging
from dlaas.runner.config import RunnerConfig, remove_secrets
from dlaas.runner.environment import build_child_env
from dlaas.runner.grant import GrantKeeper
from dlaas.runner.logfile import TrainingLog, files_phrase, human_size, tail_lines
from dlaas.runner.metrics import MetricsSender, write_parameters_file
from dlaas.runner.process import Command, Waker, become_subreaper
from dlaas.runner.reporter import TERMINAL_RETRY, Reporter
from dlaas.runner.state import Progress, StateFile
from dlaas.types.v1 import run_pb2

logger = logging.getLogger("dlaas.runner")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopReason(enum.Enum):
    USER = "cancel requested"
    MAX_RUNTIME = "maximum runtime reached"


class RunTakenAway(Exception):
    """The scheduler no longer wants this attempt: stop everything, report nothing more."""


@dataclass(frozen=True)
class Outcome:
    state: run_pb2.RunState.ValueType
    reason: run_pb2.TerminationReason.ValueType
    message: str


def decide_outcome(
    exit_code: int,
    stop: StopReason | None,
    upload_error: str | None,
    *,
    max_runtime_s: float | None = None,
    upload_summary: str = "",
) -> Outcome:
    """The terminal state of an attempt whose command ran and whose upload was tried."""
    upload_note = f"; upload failed: {upload_error}" if upload_error else ""
    if stop is StopReason.USER:
        return Outcome(
            run_pb2.RUN_STATE_CANCELLED,
            run_pb2.TERMINATION_REASON_USER,
            f"cancelled; the command was stopped (exit code {exit_code}){upload_note}",
        )
    if stop is StopReason.MAX_RUNTIME:
        limit = f" of {max_runtime_s:g} s" if max_runtime_s else ""
        return Outcome(
            run_pb2.RUN_STATE_FAILED,
            run_pb2.TERMINATION_REASON_MAX_RUNTIME,
            f"exceeded the maximum runtime{limit}; the command was stopped (exit code {exit_code}){upload_note}",
        )
    if exit_code != 0:
        return Outcome(
            run_pb2.RUN_STATE_FAILED,
            run_pb2.TERMINATION_REASON_COMMAND_FAILED,
            f"command exited with code {exit_code}{upload_note}",
        )
    if upload_error:
        return Outcome(
            run_pb2.RUN_STATE_FAILED,
            run_pb2.TERMINATION_REASON_INFRASTRUCTURE,
            f"upload of the results failed: {upload_error}",
        )
    summary = f"; {upload_summary}" if upload_summary else ""
    return Outcome(
        run_pb2.RUN_STATE_COMPLETED,
        run_pb2.TERMINATION_REASON_SUCCEEDED,
        f"command exited with code 0{summary}",
    )


class Runner:
    """Drives one attempt. ``run()`` must be called from the main thread (it handles signals)."""

    def __init__(
        self,
        config: RunnerConfig,
        *,
        base_env: Mapping[str, str] | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        # runner.json, rewritten without its secrets once the attempt ends (see `_forget_secrets`).
        self._config_path = config_path
        self.dirs = config.dirs
        self._base_env = dict(os.environ if base_env is None else base_env)
        self._started = time.monotonic()
        self._deadline = None if config.max_runtime_s is None else self._started + config.max_runtime_s
        self._waker = Waker()
        self._stop: StopReason | None = None
        self._stop_signal: int | None = None
        self._command: Command | None = None
        self._log_end: int | None = None
        self._log: TrainingLog
        self._state_file = StateFile(self.dirs.state_file, config.attempt)
        self._reporter = Reporter(config, self._state_file, self._waker.wake)
        self._grant = GrantKeeper(
            {"code": config.code_s3, "data": config.data_s3, "results": config.results_s3},
            grant=config.grant,
            storage_address=config.storage_address,
            run_token=config.run_token,
        )
        self._metrics: MetricsSender | None = None

    # --- the attempt ---------------------------------------------------------------------

    def run(self) -> int:
        """0 when a terminal state was delivered to the scheduler, 1 otherwise."""
        self._waker.install(_STOP_SIGNALS, self._on_signal)
        become_subreaper()
        try:
            self.dirs.job.mkdir(parents=True, exist_ok=True)
            self._log = TrainingLog(self.dirs.training_log)
        except OSError as exc:
            logger.error("cannot open the training log in %s: %s", self.dirs.job, exc)
            self._forget_secrets()
            self._waker.close()
            return 1
        self._reporter.start()
        self._grant.start()
        try:
            return self._run_phases()
        except RunTakenAway as exc:
            self._log.line(f"the scheduler took this attempt away ({exc}); stopping")
            self._stop_command()
            return 1
        except Exception as exc:
            logger.exception("runner failed")
            self._stop_command()
            return self._end(
                run_pb2.RUN_STATE_FAILED, run_pb2.TERMINATION_REASON_INFRASTRUCTURE, f"runner error: {exc}"
            )
        finally:
            self._grant.close()
            self._forget_secrets()
            self._reporter.close()
            self._waker.close()
            self._log.close()

    def _run_phases(self) -> int:
        gpus = ", ".join(str(index) for index in self.config.gpu_indices)
        self._log.line(
            f"attempt {self.config.attempt} of run {self.config.run_id} on "
            + (f"GPU {gpus}" if len(self.config.gpu_indices) == 1 else f"GPUs {gpus}" if gpus else "the CPU")
        )
        self._enter(run_pb2.RUN_STATE_DOWNLOADING)
        try:
            self._stage()
        except (staging.StagingError, transfer.TransferError, OSError) as exc:
            return self._end_early(
                run_pb2.RUN_STATE_FAILED, run_pb2.TERMINATION_REASON_INFRASTRUCTURE, f"staging failed: {exc}"
            )
        self._check_taken_away()
        self._check_stop()
        if self._stop is StopReason.USER:
            return self._end_early(
                run_pb2.RUN_STATE_CANCELLED,
                run_pb2.TERMINATION_REASON_USER,
                "cancelled before the command started",
            )
        if self._stop is StopReason.MAX_RUNTIME:
            return self._end_early(
                run_pb2.RUN_STATE_FAILED,
                run_pb2.TERMINATION_REASON_MAX_RUNTIME,
                "exceeded the maximum runtime before the command started",
            )
        try:
            self._start_command()
        except OSError as exc:
            return self._end_early(
                run_pb2.RUN_STATE_FAILED,
                run_pb2.TERMINATION_REASON_INFRASTRUCTURE,
                f"cannot start the command: {exc}",
            )
        self._enter(run_pb2.RUN_STATE_RUNNING)
        exit_code = self._wait_for_command()
        self._stop_metrics()
        self._check_taken_away()
        self._enter(run_pb2.RUN_STATE_UPLOADING, exit_code=exit_code)
        summary, upload_error = self._upload()
        outcome = decide_outcome(
            exit_code,
            self._stop,
            upload_error,
            max_runtime_s=self.config.max_runtime_s,
            upload_summary=summary,
        )
        return self._end(outcome.state, outcome.reason, outcome.message, exit_code=exit_code)

    # --- phases --------------------------------------------------------------------------

    def _stage(self) -> None:
        dirs = self.dirs
        for folder in (dirs.model, dirs.results, dirs.logs, dirs.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        code_archive = self.config.code_archive_path
        data_path = self.config.data_path
        if code_archive is not None or data_path is not None:
            # Paths on the platform store: staged from only while the storage service vouches for them.
            self._grant.vouch_local()
            for path in (code_archive, data_path):
                if path is not None:
                    self._grant.check_local(path, write=False)
        self._grant.ensure()
        code_s3 = self._grant.get("code")
        if code_s3 is not None:
            code_archive = dirs.job / "model.tar.gz"
            transfer_s3.download_object(code_s3, code_s3.prefix, code_archive, fresh=self._grant.fresh("code"))
        if code_archive is not None:
            began = time.monotonic()
            extracted = staging.extract_code_archive(code_archive, dirs.model)
            self._log.line(
                f"extracted the model code: {files_phrase(extracted.files)} ({human_size(extracted.bytes)})"
                f" in {time.monotonic() - began:.2f} s"
            )
        began = time.monotonic()
        data_s3 = self._grant.get("data")
        if data_s3 is not None:
            staged = transfer_s3.download_prefix(data_s3, dirs.data, fresh=self._grant.fresh("data"))
        else:
            staged = staging.stage_data(data_path, dirs.data)
        if data_path is not None or self.config.data_s3 is not None:
            notes = [f"{staged.linked} linked"] if staged.linked else []
            notes += [f"{staged.skipped} already there"] if staged.skipped else []
            self._log.line(
                f"staged {files_phrase(staged.files)} ({'; '.join([human_size(staged.bytes), *notes])})"
                f" in {time.monotonic() - began:.2f} s"
            )

    def _start_command(self) -> None:
        env = build_child_env(self.config, self._base_env) | write_parameters_file(self.config)
        if self.config.learner_id == 1:  # one learner speaks for the run, as rank 0 does
            self._metrics = MetricsSender(self.config, self.dirs.training_log, self.dirs.logs)
            self._metrics.start()
        self._command = Command(self.config.command, cwd=self.dirs.model, env=env, log_fd=self._log.fileno())
        self._state_file.set_command_pgid(self._command.pgid)

    def _wait_for_command(self) -> int:
        command = self._command
        assert command is not None
        began = time.monotonic()
        while True:
            self._check_taken_away()
            self._check_stop()
            if self._stop is not None:
                self._log.line(f"{self._stop_description()}: stopping the command")
                exit_code = command.stop(self._waker)
                self._log.line(f"command stopped with exit code {exit_code} after {time.monotonic() - began:.1f} s")
                break
            timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            if command.wait_exit(self._waker, timeout):
                exit_code = command.finish()
                self._log.line(f"command exited with code {exit_code} after {time.monotonic() - began:.1f} s")
                break
        self._command = None
        self._log_end = self._log.size()
        return exit_code

    def _stop_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.stop()
            self._log.line(f"sent {self._metrics.points_sent} metric points")
            self._metrics = None

    def _upload(self) -> tuple[str, str | None]:
        """Upload results and logs; (summary, error). training.log goes last, once, so it
        holds the upload line (the log itself is not counted in it)."""
        dirs = self.dirs
        began = time.monotonic()
        try:
            for folder in (dirs.results, dirs.logs):
                folder.mkdir(parents=True, exist_ok=True)
            if self.config.results_path is not None:
                # Results to the platform store: only while the storage service vouches for the grant.
                self._grant.vouch_local()
            self._grant.ensure()
            results = self._upload_tree(dirs.results, "")
            logs = self._upload_tree(dirs.logs, "logs")
            files = results.files + logs.files
            unchanged = results.skipped + logs.skipped
            summary = f"uploaded {files_phrase(files)} ({human_size(results.bytes + logs.bytes)})"
            if unchanged:
                summary += f", {unchanged} already there"
            self._log.line(f"{summary}, verified, in {time.monotonic() - began:.2f} s")
            self._upload_training_log()
        except (transfer.TransferError, OSError) as exc:
            self._log.line(f"upload failed: {exc}")
            self._upload_log_best_effort()
            return "", str(exc)
        return summary, None

    def _upload_tree(self, folder: Path, under: str) -> transfer.TransferStats:
        results_s3 = self._grant.get("results")
        if results_s3 is not None:
            return transfer_s3.upload_tree(folder, results_s3, under, fresh=self._grant.fresh("results"))
        assert self.config.results_path is not None
        return transfer.copy_tree(folder, self._grant.check_local(self.config.results_path / under, write=True))

    def _upload_training_log(self) -> None:
        results_s3 = self._grant.get("results")
        if results_s3 is not None:
            key = results_s3.key("logs/training.log")
            transfer_s3.upload_file(self.dirs.training_log, results_s3, key, fresh=self._grant.fresh("results"))
            return
        assert self.config.results_path is not None
        target = self._grant.check_local(self.config.results_path / "logs" / "training.log", write=True)
        transfer.copy_file(self.dirs.training_log, target, verify=True)

    def _upload_log_best_effort(self) -> None:
        try:
            self._upload_training_log()
        except (transfer.TransferError, OSError) as exc:
            logger.warning("cannot upload the training log: %s", exc)

    def _end_early(
        self, state: run_pb2.RunState.ValueType, reason: run_pb2.TerminationReason.ValueType, message: str
    ) -> int:
        """End before the command ran: say why in the log, upload what there is, report."""
        self._log.line(message)
        self._log_end = self._log.size()
        _, upload_error = self._upload()
        if upload_error:
            message += f"; upload failed: {upload_error}"
        return self._end(state, reason, message)

    def _end(
        self,
        state: run_pb2.RunState.ValueType,
        reason: run_pb2.TerminationReason.ValueType,
        message: str,
        *,
        exit_code: int | None = None,
    ) -> int:
        tail: tuple[str, ...] = ()
        if state != run_pb2.RUN_STATE_COMPLETED:
            tail = tuple(tail_lines(self.dirs.training_log, end=self._log_end))
        # Before the end is reported: once the scheduler knows, nothing on disk may hold them.
        self._grant.close()
        self._forget_secrets()
        self._enter(state, exit_code=exit_code, reason=reason, message=message, log_tail=tail)
        if self._reporter.wait_terminal(TERMINAL_RETRY.budget_s + 60):
            return 0
        logger.error("the terminal state was not delivered to the scheduler")
        return 1

    # --- plumbing ------------------------------------------------------------------------

    def _forget_secrets(self) -> None:
        """Rewrites runner.json without the run token and the grant's credentials (kept in memory
        for the reports still to send). Nothing on disk needs them once the attempt has ended."""
        path, self._config_path = self._config_path, None
        if path is None or remove_secrets(path):
            return
        if not os.access(path.parent, os.W_OK):  # a read-only Secret volume: the pod's end removes it
            logger.info("%s is read only: its secrets go with the volume", path)
        else:
            logger.warning("could not remove the secrets from %s", path)

    def _enter(
        self,
        state: run_pb2.RunState.ValueType,
        *,
        exit_code: int | None = None,
        reason: run_pb2.TerminationReason.ValueType = run_pb2.TERMINATION_REASON_UNSPECIFIED,
        message: str = "",
        log_tail: tuple[str, ...] = (),
    ) -> None:
        progress = Progress(
            state=state,
            event_time_ns=time.time_ns(),
            exit_code=exit_code,
            termination_reason=reason,
            message=message,
            log_tail=log_tail,
        )
        self._state_file.record(progress)
        self._reporter.submit(progress)
        logger.info("entered %s", run_pb2.RunState.Name(state))

    def _on_signal(self, signum: int) -> None:
        # In a signal handler: record only; the main loop acts on it.
        if self._stop is None:
            self._stop = StopReason.USER
            self._stop_signal = signum

    def _check_stop(self) -> None:
        if self._stop is None and self._reporter.cancel_requested:
            self._stop = StopReason.USER
        if self._stop is None and self._deadline is not None and time.monotonic() >= self._deadline:
            self._stop = StopReason.MAX_RUNTIME

    def _stop_description(self) -> str:
        if self._stop_signal is not None:
            return f"received {signal.Signals(self._stop_signal).name}"
        return self._stop.value if self._stop is not None else "stopping"

    def _check_taken_away(self) -> None:
        if self._reporter.taken_away is not None:
            raise RunTakenAway(self._reporter.taken_away)

    def _stop_command(self) -> None:
        if self._command is not None:
            try:
                self._command.stop(self._waker)
            finally:
                self._command = None
