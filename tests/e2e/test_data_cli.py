"""`dlaas data upload|ls|rm` and `dlaas download` on an S3 connection (a real Ceph RGW) and on the
platform's own store, through the real services; and a run that outlives its first credentials.

The CLI never holds the connection's keys: it gets a grant scoped to the location it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import sys
import tarfile
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dlaas.types.v1 import run_pb2
from tests.conftest import DatabaseFactory
from tests.e2e.test_s3_runs import COMMAND, cli, manifest, pack, register, s3_store
from tests.s3 import S3Server
from tests.support import Platform, start_platform, submit, wait_for

pytestmark = pytest.mark.e2e


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_data_upload_ls_rm_on_an_s3_connection(platform: Platform, s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3_server, secret="PlantedCli" + uuid.uuid4().hex)
    await register(platform, s3_server, store)
    big = os.urandom(40 << 20)  # over the part size: a multipart upload
    local = _tree(tmp_path / "up", {"a.csv": b"1,2\n", "deep/b.bin": b"\0" * 1000, "big.bin": big})
    dest = f"{store.data}/uploaded"

    first = await cli(platform, "data", "upload", str(local), dest, "--connection", "rgw")
    again = await cli(platform, "data", "upload", str(local), dest, "--connection", "rgw")
    fetched = store.client.get_object(store.data, "uploaded/big.bin").read()
    listed = await cli(platform, "data", "ls", dest, "--connection", "rgw", "-o", "json")
    unconfirmed = await cli(platform, "data", "rm", dest, "--connection", "rgw")
    kept = sorted(o.object_name for o in store.client.list_objects(store.data, prefix="uploaded/", recursive=True))
    removed = await cli(platform, "data", "rm", dest, "--connection", "rgw", "--yes")
    left = sorted(o.object_name for o in store.client.list_objects(store.data, recursive=True))

    assert first[0] == 0 and "3 file(s)" in first[1], first
    assert again[0] == 0 and "0 file(s), 0 bytes" in again[1] and "(3 already there)" in again[1], again
    assert fetched == big
    objects = json.loads(listed[1])["objects"]
    assert sorted((o["key"], int(o["size_bytes"])) for o in objects) == [
        ("uploaded/a.csv", 4),
        ("uploaded/big.bin", 40 << 20),
        ("uploaded/deep/b.bin", 1000),
    ]
    assert unconfirmed[0] == 1 and "3 object(s)" in unconfirmed[1] and "--yes" in unconfirmed[1], unconfirmed
    assert kept == ["uploaded/a.csv", "uploaded/big.bin", "uploaded/deep/b.bin"]
    assert removed == (0, f"deleted 3 object(s) under {dest}\n")
    assert "uploaded/a.csv" not in left and "digits/train.csv" in left  # only under the prefix
    for _, out in (first, again, listed, unconfirmed, removed):
        assert store.user.secret_key not in out and store.user.access_key not in out


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_data_rm_on_the_platform_store_and_an_unknown_connection(platform: Platform, tmp_path: Path) -> None:
    local = _tree(tmp_path / "up", {"x/1.txt": b"1", "x/2.txt": b"2"})
    uploaded = await cli(platform, "data", "upload", str(local), "bucket1/set")
    removed = await cli(platform, "data", "rm", "bucket1/set/x", "--yes")
    listed = await cli(platform, "data", "ls", "bucket1", "-o", "json")
    unknown = await cli(platform, "data", "ls", "bucket1", "--connection", "nope")

    assert uploaded[0] == 0 and "2 file(s)" in uploaded[1]
    assert removed == (0, "deleted 2 object(s) under bucket1/set/x\n")
    assert json.loads(listed[1]) == {} or json.loads(listed[1]).get("objects", []) == []
    assert unknown[0] == 1 and "connection nope is not registered" in unknown[1]


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_upload_on_a_terminal_shows_its_progress_with_rate_and_time_left(
    platform: Platform, tmp_path: Path
) -> None:
    local = _tree(tmp_path / "up", {f"part-{i}.bin": os.urandom(8 << 20) for i in range(6)})
    controller, terminal = os.openpty()  # the CLI's stderr is a terminal: it draws the bar there
    try:
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "dlaas"),
            *("data", "upload", str(local), "bucket1/progress"),
            env={**os.environ, "DLAAS_ENDPOINT": platform.gateway.address, "DLAAS_API_KEY": platform.key},
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
        )
        out, _ = await process.communicate()
        os.close(terminal)
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(controller, 1 << 16):
                drawn += chunk
    finally:
        os.close(controller)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn.decode(errors="replace"))

    assert process.returncode == 0 and "6 file(s), 50331648 bytes" in out.decode(), out
    assert "50.3/50.3 MB" in screen, screen  # bytes done of the total
    assert re.search(r"\d+(\.\d+)? [kMG]?B/s", screen), screen  # the rate
    assert re.search(r"\d+:\d\d:\d\d", screen), screen  # the time left


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_download_fetches_results_logs_and_code_from_the_platform_store(
    platform: Platform, tmp_path: Path
) -> None:
    command = "import os, pathlib; pathlib.Path(os.environ['RESULT_DIR'], 'out.txt').write_text('done')"
    run = await submit(platform.client, _manifest(), pack({"train.py": command, "lib/util.py": "X = 1\n"}))
    done = await wait_for(platform.client, run.name, timeout=120)
    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
    run_id = run.name.rsplit("/", 1)[-1]

    code, out = await cli(platform, "download", run_id, "--to", str(tmp_path / "dl"))

    assert code == 0, out
    assert (tmp_path / "dl" / "out.txt").read_text() == "done"
    assert "uploaded" in (tmp_path / "dl" / "logs" / "training.log").read_text()
    with tarfile.open(tmp_path / "dl" / "code" / "model.tar.gz") as archive:
        assert sorted(archive.getnames()) == ["lib/util.py", "train.py"]


@pytest.fixture
async def short_sessions(
    databases: DatabaseFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Platform]:
    """A platform whose grants hand out credentials that last 3 s: runs must renew them."""
    monkeypatch.setenv("DLAAS_STORAGE_GRANT_SESSION_S", "3")
    started = await start_platform(databases, tmp_path)
    yield started
    await started.stop()


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_a_run_outliving_its_first_credentials_renews_them_and_uploads(
    short_sessions: Platform, s3_server: S3Server, tmp_path: Path
) -> None:
    platform = short_sessions
    store = s3_store(s3_server)
    await register(platform, s3_server, store)
    slow = "import time; time.sleep(8)\n" + COMMAND

    run = await submit(platform.client, manifest(store), pack({"train.py": slow}))
    done = await wait_for(platform.client, run.name, timeout=180)

    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
    config_path = next(platform.jobs_dir.rglob("runner.json"))
    config = json.loads(config_path.read_text())
    first_expiry_ms = config["results_s3"]["expire_ms"]
    run_id = run.name.rsplit("/", 1)[-1]
    uploaded = store.client.stat_object(store.results, f"{run_id}/big.bin")
    # The results were written after the first credentials had expired: with renewed ones.
    assert uploaded.last_modified is not None
    assert uploaded.last_modified.timestamp() * 1000 > first_expiry_ms
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    # `dlaas download` reads them back from the connection, with the model code.
    code, out = await cli(platform, "download", run_id, "--to", str(tmp_path / "dl"))
    assert code == 0, out
    assert (tmp_path / "dl" / "big.bin").stat().st_size == 40 << 20
    assert (tmp_path / "dl" / "model" / "weights.txt").read_text().startswith("1001 rows")
    assert "trained on 1001 rows" in (tmp_path / "dl" / "logs" / "training.log").read_text()
    assert (tmp_path / "dl" / "code" / "model.tar.gz").stat().st_size > 0


def _manifest() -> str:
    return textwrap.dedent(
        """\
        name: local-run
        framework: {name: python}
        command: python train.py
        resources: {gpus: 1}
        """
    )
