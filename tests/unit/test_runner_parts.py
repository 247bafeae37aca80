"""The runner's parts that need no scheduler: config and its secrets, the local grant, staging,
environment, log tail, process group."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from dlaas.runner.config import ConfigError, RunnerConfig, remove_secrets
from dlaas.runner.environment import build_child_env
from dlaas.runner.grant import GrantError, GrantKeeper, LocalGrant
from dlaas.runner.logfile import TrainingLog, human_size, tail_lines
from dlaas.runner.process import Command, Waker, exit_code_of
from dlaas.runner.runner import StopReason, decide_outcome
from dlaas.runner.staging import StagingError, UnsafeArchiveError, extract_code_archive, stage_data
from dlaas.runner.state import Progress, StateFile
from dlaas.storage.v1 import storage_pb2
from dlaas.types.v1 import run_pb2


def runner_document(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "run": "accounts/a/runs/r1",
        "run_id": "r1",
        "attempt": 1,
        "run_token": "s3cret-token",
        "scheduler_address": "127.0.0.1:50051",
        "command": "python train.py --epochs 5",
        "python_bin_dir": "/opt/venv/bin",
        "gpu_indices": [0, 2],
        "num_learners": 1,
        "environment": {"K": "V"},
        "job_dir": str(tmp_path / "job"),
        "code_archive_path": None,
        "data_path": None,
        "results_path": str(tmp_path / "objects" / "results" / "r1"),
        "max_runtime_s": 1800,
        "trace_carrier": {"traceparent": "00-abc-def-01"},
    }
    document.update(overrides)
    return document


def make_config(tmp_path: Path, **overrides: Any) -> RunnerConfig:
    return RunnerConfig.from_dict(runner_document(tmp_path, **overrides))


# --- runner.json ---------------------------------------------------------------------------


def test_config_loads_and_never_shows_the_token(tmp_path: Path) -> None:
    path = tmp_path / "runner.json"
    path.write_text(json.dumps(runner_document(tmp_path)))

    config = RunnerConfig.load(path)

    assert config.gpu_indices == (0, 2)
    assert config.job_dir == tmp_path / "job"
    assert config.dirs.data == tmp_path / "job" / "data"
    assert config.max_runtime_s == 1800.0
    assert config.run_token == "s3cret-token"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"run_token": ""}, "'run_token' must be a non-empty string"),
        ({"attempt": 0}, "'attempt' must be a positive integer"),
        ({"attempt": True}, "'attempt' must be a positive integer"),
        ({"gpu_indices": [0, -1]}, "'gpu_indices'"),
        ({"job_dir": "relative/job"}, "'job_dir' must be an absolute path"),
        ({"environment": {"A": 1}}, "'environment'"),
        ({"max_runtime_s": -1}, "'max_runtime_s'"),
    ],
)
def test_config_names_the_bad_field(tmp_path: Path, overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        make_config(tmp_path, **overrides)


def test_config_refuses_a_missing_field_and_a_broken_file(tmp_path: Path) -> None:
    document = runner_document(tmp_path)
    del document["command"]
    with pytest.raises(ConfigError, match="'command' is required"):
        RunnerConfig.from_dict(document)
    broken = tmp_path / "runner.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunnerConfig.load(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        RunnerConfig.load(tmp_path / "missing.json")


def test_removing_the_secrets_keeps_what_others_read(tmp_path: Path) -> None:
    signed = "http://127.0.0.1:9/data/mnist/a?X-Amz-Signature=sig-SECRET"
    document = runner_document(
        tmp_path,
        grant="accounts/a/grants/g1",
        results_path=None,
        results_s3={
            "endpoint": "http://127.0.0.1:9",
            "region": "default",
            "bucket": "results",
            "prefix": "r1",
            "access_key_id": "TEMPKEY-SECRET",
            "secret_access_key": "temp-SECRET",
            "session_token": "session-SECRET",
            "expire_ms": 123,
        },
        data_s3={
            "endpoint": "http://127.0.0.1:9",
            "bucket": "data",
            "prefix": "mnist",
            "presigned": {
                "objects": [["mnist/a", 3, "etag", signed]],
                "post_url": "http://127.0.0.1:9/data",
                "post_fields": {"policy": "policy-SECRET", "x-amz-signature": "post-SECRET"},
            },
        },
    )
    path = RunnerConfig.from_dict(document).write(tmp_path / "runner.json")
    assert "SECRET" in path.read_text() and "s3cret" in path.read_text()

    assert remove_secrets(path) and remove_secrets(path)  # once more changes nothing

    text = path.read_text()
    assert "SECRET" not in text and "s3cret" not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    left = json.loads(text)
    assert left["secrets_removed"] is True and "run_token" not in left
    # What make chaos, the tests and people read after the attempt stays.
    assert (left["run"], left["gpu_indices"], left["grant"]) == ("accounts/a/runs/r1", [0, 2], "accounts/a/grants/g1")
    assert left["results_s3"] == {
        "endpoint": "http://127.0.0.1:9",
        "region": "default",
        "bucket": "results",
        "prefix": "r1",
        "expire_ms": 123,
    }
    assert left["data_s3"]["presigned"] == {"object_count": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ConfigError, match="secrets were removed"):
        RunnerConfig.load(path)
    assert remove_secrets(tmp_path / "gone.json")  # nothing there, nothing held


# --- the grant on the platform store ----------------------------------------------------------


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def local_answer(objects: Path, *, expire_s: float, revoked: bool = False) -> storage_pb2.Grant:
    """The storage service's answer for run r1: READ on its data, WRITE on its results."""
    answer = storage_pb2.Grant(name="accounts/a/grants/g1", run="accounts/a/runs/r1")
    for path, mode in (
        (objects / "a" / "data" / "mnist", storage_pb2.ACCESS_MODE_READ),
        (objects / "a" / "results" / "r1", storage_pb2.ACCESS_MODE_WRITE),
    ):
        answer.accesses.add(mode=mode, local=storage_pb2.LocalAccess(path=str(path)))
    answer.expire_time.FromMilliseconds(int(expire_s * 1000))
    if revoked:
        answer.revoke_time.FromMilliseconds(int(expire_s * 1000) - 1)
    return answer


def test_a_local_grant_covers_its_folders_in_their_modes_until_it_expires(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    grant = LocalGrant.from_grant(local_answer(objects, expire_s=1000.0))
    data, results = objects / "a" / "data" / "mnist", objects / "a" / "results" / "r1"

    for path in (data, data / "train.csv", results / "logs" / "training.log"):
        grant.check(path, write=False, now_s=10.0)
    grant.check(results, write=True, now_s=10.0)
    grant.check(results / "model" / "w.bin", write=True, now_s=10.0)
    refused = [
        (objects / "a" / "data" / "mnist-private" / "x", False),  # a sibling with the same start
        (objects / "a" / "data", False),  # the bucket above the prefix
        (objects / "b" / "data" / "mnist", False),  # another account
        (data / "train.csv", True),  # the data is read only
        (objects / "a" / "results" / "r2", True),  # another run's results
        (objects / "a" / "results" / "r2", False),
        (objects / "a" / "results" / "r12", True),
        (results / ".." / "r2" / "x", True),
    ]
    for path, write in refused:
        with pytest.raises(GrantError, match="does not let it"):
            grant.check(path, write=write, now_s=10.0)
    with pytest.raises(GrantError, match="expired"):
        grant.check(data, write=False, now_s=1000.0)
    revoked = LocalGrant.from_grant(local_answer(objects, expire_s=1000.0, revoked=True))
    with pytest.raises(GrantError, match="does not let it"):
        revoked.check(data, write=False, now_s=10.0)


def test_the_runner_uses_local_paths_only_while_the_storage_service_vouches(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    data = objects / "a" / "data" / "mnist"
    answers: list[storage_pb2.Grant | grpc.RpcError] = []

    def renew() -> storage_pb2.Grant:
        answer = answers.pop(0)
        if isinstance(answer, grpc.RpcError):
            raise answer
        return answer

    keeper = GrantKeeper({}, grant="accounts/a/grants/g1", storage_address="", run_token="t", renew=renew)
    with pytest.raises(GrantError, match="not vouched"):
        keeper.check_local(data, write=False)  # nothing asked yet
    # A storage service that is restarting is asked again; then its answer is what counts.
    answers += [FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"), local_answer(objects, expire_s=time.time() + 60)]
    keeper.vouch_local()
    assert keeper.check_local(data / "train.csv", write=False) == data / "train.csv"
    with pytest.raises(GrantError, match="does not let it write"):
        keeper.check_local(objects / "a" / "results" / "r2", write=True)
    # The run ended (the scheduler revoked the grant): refused, and the earlier answer is dropped.
    answers.append(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "grant g1 was revoked: its run ended"))
    with pytest.raises(GrantError, match=r"did not confirm the run's grant: FAILED_PRECONDITION: .*revoked"):
        keeper.vouch_local()
    with pytest.raises(GrantError, match="not vouched"):
        keeper.check_local(data, write=False)
    assert answers == []
    # No grant in runner.json: no path on the platform store at all.
    orphan = GrantKeeper({}, grant="", storage_address="127.0.0.1:1", run_token="t")
    with pytest.raises(GrantError, match="names no storage grant"):
        orphan.vouch_local()


# --- the code archive ----------------------------------------------------------------------


def write_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, content in members:
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.addfile(info)
    return path


def regular(name: str, content: bytes = b"print('hi')\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), content


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_extract_code_archive_extracts_a_normal_archive(tmp_path: Path) -> None:
    folder = tarfile.TarInfo("./pkg")
    folder.type = tarfile.DIRTYPE
    archive = write_archive(
        tmp_path / "model.tar.gz",
        [
            (folder, None),
            regular("./train.py"),
            regular("./pkg/util.py", b"X = 1\n"),
            link("./pkg/alias.py", "util.py"),
        ],
    )
    dest = tmp_path / "model"

    stats = extract_code_archive(archive, dest)

    assert (dest / "train.py").read_text() == "print('hi')\n"
    assert (dest / "pkg" / "alias.py").read_text() == "X = 1\n"
    assert (stats.files, stats.bytes) == (2, len(b"print('hi')\n") + len(b"X = 1\n"))


@pytest.mark.parametrize(
    ("member", "complaint"),
    [
        (regular("../x.py"), "'..' part"),
        (regular("pkg/../../x.py"), "'..' part"),
        (regular("/etc/cron.d/x"), "absolute path"),
        (link("etc", "/etc"), "absolute path"),
        (link("pkg/up", "../../outside"), "outside the archive"),
        (link("hard", "../outside", tarfile.LNKTYPE), "outside the archive"),
        (link("tty", "", tarfile.CHRTYPE), "device or special file"),
        (link("pipe", "", tarfile.FIFOTYPE), "device or special file"),
    ],
)
def test_extract_code_archive_refuses_escapes_and_devices(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], complaint: str
) -> None:
    archive = write_archive(tmp_path / "model.tar.gz", [regular("train.py"), member])
    dest = tmp_path / "job" / "model"

    with pytest.raises(UnsafeArchiveError, match=complaint):
        extract_code_archive(archive, dest)

    assert sorted(p.name for p in (tmp_path / "job").rglob("*")) == ["model", "train.py"]


def test_extract_code_archive_limits_members_and_size(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "many.tar.gz", [regular(f"f{i}.py") for i in range(5)])
    with pytest.raises(UnsafeArchiveError, match="more than 4 members"):
        extract_code_archive(archive, tmp_path / "a", max_members=4)
    with pytest.raises(UnsafeArchiveError, match="more than"):
        extract_code_archive(archive, tmp_path / "b", max_bytes=30)
    assert extract_code_archive(archive, tmp_path / "c", max_members=5).files == 5


def test_extract_code_archive_refuses_what_is_not_a_tar(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"this is not gzip")
    with pytest.raises(StagingError, match="not a readable tar archive"):
        extract_code_archive(archive, tmp_path / "model")


# --- the data ------------------------------------------------------------------------------


def test_stage_data_links_the_files_or_leaves_the_folder_empty(tmp_path: Path) -> None:
    store = tmp_path / "objects" / "acct" / "digits-data" / "prefix"
    (store / "nested").mkdir(parents=True)
    (store / "nested" / "digits.npz").write_bytes(b"npz")

    stats = stage_data(store, tmp_path / "job" / "data")
    empty = stage_data(None, tmp_path / "job2" / "data")

    assert os.path.samefile(store / "nested" / "digits.npz", tmp_path / "job" / "data" / "nested" / "digits.npz")
    assert (stats.files, stats.linked) == (1, 1)
    assert empty.files == 0 and list((tmp_path / "job2" / "data").iterdir()) == []
    with pytest.raises(StagingError, match="not found"):
        stage_data(tmp_path / "objects" / "nothing", tmp_path / "job3" / "data")


# --- the command's environment -------------------------------------------------------------


def test_child_env_has_the_learner_variables_and_no_runner_secrets(tmp_path: Path) -> None:
    config = make_config(tmp_path, environment={"K": "V", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    base = {"PATH": "/usr/bin:/bin", "HOME": "/home/u", "DLAAS_RUN_TOKEN": "x", "DLAAS_DATA_DIR": "/d"}

    env = build_child_env(config, base)

    job = tmp_path / "job"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"  # the spec cannot widen its GPUs
    assert env["GPU_COUNT"] == "2"
    assert env["PATH"] == "/opt/venv/bin:/usr/bin:/bin"
    assert env["K"] == "V" and env["HOME"] == "/home/u"
    assert not [key for key in env if key.startswith("DLAAS_")]
    assert {key: env[key] for key in ("DATA_DIR", "RESULT_DIR", "LOG_DIR", "CHECKPOINT_DIR", "JOB_STATE_DIR")} == {
        "DATA_DIR": str(job / "data"),
        "RESULT_DIR": str(job / "results"),
        "LOG_DIR": str(job / "logs"),
        "CHECKPOINT_DIR": str(job / "checkpoints"),
        "JOB_STATE_DIR": str(job),
    }
    assert (env["TRAINING_ID"], env["NUM_LEARNERS"], env["LEARNER_ID"]) == ("r1", "1", "1")
    assert env["MODEL_DIR"] == str(job / "model") and env["PYTHONUNBUFFERED"] == "1"


def test_child_env_without_gpus_or_framework_dir(tmp_path: Path) -> None:
    config = make_config(tmp_path, gpu_indices=[], python_bin_dir="")

    env = build_child_env(config, {"PATH": "/usr/bin", "VIRTUAL_ENV": "/runner/venv"})

    assert env["CUDA_VISIBLE_DEVICES"] == ""  # set and empty: no GPU visible
    assert env["GPU_COUNT"] == "0"
    assert env["PATH"] == "/usr/bin"
    assert env["VIRTUAL_ENV"] == "/runner/venv"


# --- the log -------------------------------------------------------------------------------


def test_tail_lines_keeps_the_last_lines_cut_to_size(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    lines = [f"epoch={i} loss=0.{i}" for i in range(30)]
    log.write_text("\n".join(lines[:25]) + "\n" + "x" * 2000 + "\n" + "\n".join(lines[25:]) + "\n\n")

    tail = tail_lines(log)

    assert len(tail) == 20
    assert tail[-1] == "epoch=29 loss=0.29"
    assert tail[-6] == "x" * 500
    assert tail[0] == "epoch=11 loss=0.11"


def test_tail_lines_shows_the_last_state_of_a_progress_bar_and_stops_at_end(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    log.write_bytes(b"start\n 10%\r 50%\r100%\nTraceback: boom\n[dlaas] uploaded 1 file\n")
    end = len(b"start\n 10%\r 50%\r100%\nTraceback: boom\n")

    assert tail_lines(log, end=end) == ["start", "100%", "Traceback: boom"]
    assert tail_lines(log, lines=1) == ["[dlaas] uploaded 1 file"]
    assert tail_lines(tmp_path / "missing.log") == []


def test_training_log_appends_prefixed_lines(tmp_path: Path) -> None:
    path = tmp_path / "training.log"
    path.write_text("user output\n")
    log = TrainingLog(path)
    log.line("staged 1 file (123 KiB) in 0.01 s")
    log.close()

    assert path.read_text() == "user output\n[dlaas] staged 1 file (123 KiB) in 0.01 s\n"


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (123 * 1024, "123 KiB"), (5 << 30, "5.0 GiB")],
)
def test_human_size(count: int, text: str) -> None:
    assert human_size(count) == text


# --- state.json and the outcome ------------------------------------------------------------


def test_state_file_is_marked_reported_only_for_the_current_state(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "state.json", attempt=2)
    downloading = Progress(state=run_pb2.RUN_STATE_DOWNLOADING, event_time_ns=1_700_000_000_123_456_000)
    running = Progress(state=run_pb2.RUN_STATE_RUNNING, event_time_ns=1_700_000_001_000_000_000)

    state_file.record(downloading)
    state_file.record(running)
    state_file.mark_reported(downloading)  # acknowledged late: must not mark RUNNING
    first = json.loads((tmp_path / "state.json").read_text())
    state_file.mark_reported(running)
    second = json.loads((tmp_path / "state.json").read_text())

    assert first == {
        "attempt": 2,
        "state": "RUN_STATE_RUNNING",
        "event_time": "2023-11-14T22:13:21.000000Z",
        "exit_code": None,
        "termination_reason": "TERMINATION_REASON_UNSPECIFIED",
        "message": "",
        "log_tail": [],
        "reported": False,
        "command_pgid": None,
    }
    assert second["reported"] is True


@pytest.mark.parametrize(
    ("exit_code", "stop", "upload_error", "state", "reason"),
    [
        (0, None, None, run_pb2.RUN_STATE_COMPLETED, run_pb2.TERMINATION_REASON_SUCCEEDED),
        (2, None, None, run_pb2.RUN_STATE_FAILED, run_pb2.TERMINATION_REASON_COMMAND_FAILED),
        (0, None, "disk full", run_pb2.RUN_STATE_FAILED, run_pb2.TERMINATION_REASON_INFRASTRUCTURE),
        (143, StopReason.USER, None, run_pb2.RUN_STATE_CANCELLED, run_pb2.TERMINATION_REASON_USER),
        (137, StopReason.MAX_RUNTIME, None, run_pb2.RUN_STATE_FAILED, run_pb2.TERMINATION_REASON_MAX_RUNTIME),
    ],
)
def test_decide_outcome(
    exit_code: int,
    stop: StopReason | None,
    upload_error: str | None,
    state: run_pb2.RunState.ValueType,
    reason: run_pb2.TerminationReason.ValueType,
) -> None:
    outcome = decide_outcome(exit_code, stop, upload_error)
    assert (outcome.state, outcome.reason) == (state, reason)
    assert str(exit_code) in outcome.message or upload_error


# --- the command's process group -----------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_command_exit_takes_its_background_children_with_it(tmp_path: Path) -> None:
    log = tmp_path / "training.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    waker = Waker()
    try:
        command = Command(
            'sleep 60 & echo "$!" > child.pid; echo "visible=$CUDA_VISIBLE_DEVICES"; exit 3',
            cwd=tmp_path,
            env={"PATH": os.defpath, "CUDA_VISIBLE_DEVICES": "1"},
            log_fd=fd,
        )
        while not command.wait_exit(waker, 5.0):
            pass
        exit_code = command.finish()
    finally:
        os.close(fd)
        waker.close()

    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)  # killed; waiting for init to reap it
    assert exit_code == 3
    assert not pid_alive(child)
    assert log.read_text() == "visible=1\n"


def test_command_stop_kills_a_command_that_ignores_sigterm(tmp_path: Path) -> None:
    waker = Waker()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        command = Command("trap '' TERM; sleep 60 & wait", cwd=tmp_path, env={"PATH": os.defpath}, log_fd=devnull)
        time.sleep(0.2)  # let the shell install its trap
        began = time.monotonic()
        exit_code = command.stop(waker, grace_s=0.5)
        elapsed = time.monotonic() - began
    finally:
        os.close(devnull)
        waker.close()

    assert exit_code == 128 + signal.SIGKILL
    assert 0.4 < elapsed < 5


def test_exit_code_of_a_signalled_process() -> None:
    assert exit_code_of(-signal.SIGTERM) == 143
    assert exit_code_of(0) == 0 and exit_code_of(7) == 7


def test_a_standby_runner_ends_quietly_when_its_scheduler_goes_away(tmp_path: Path) -> None:
    # The local backend keeps one runner warm, waiting on stdin; EOF means the scheduler is gone.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "dlaas.runner", "--standby"], input=b"", capture_output=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.iterdir())
