"""Runs whose data and results live on an account's own S3 store (a real Ceph RGW).

The account registers the store as a connection; the runner stages the data and uploads the
results with the run's grant (temporary credentials scoped to the data prefix and to
results/<run>), and the grant stops working when the run ends.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from minio import Minio
from minio.error import S3Error

from dlaas.gateway.v1 import connections_pb2, connections_pb2_grpc, gateway_pb2
from dlaas.types.v1 import run_pb2
from tests.s3 import REGION, S3Server, S3User
from tests.support import Platform, pack, submit, wait_for

pytestmark = pytest.mark.e2e

TRAIN = b"x,y\n" + b"".join(f"{i},{i * 2}\n".encode() for i in range(1000))


@dataclass
class Store:
    user: S3User
    client: Minio
    data: str
    results: str


def s3_store(server: S3Server, secret: str = "") -> Store:
    """A user of its own on the RGW (with a planted secret, if given) holding a data and a results bucket."""
    user = server.create_user(f"acct-{uuid.uuid4().hex[:8]}", secret=secret)
    client = Minio(server.endpoint, user.access_key, user.secret_key, secure=False, region=REGION)
    suffix = uuid.uuid4().hex[:8]
    store = Store(user, client, f"data-{suffix}", f"results-{suffix}")
    for bucket in (store.data, store.results):
        client.make_bucket(bucket)
    client.put_object(store.data, "digits/train.csv", io.BytesIO(TRAIN), len(TRAIN))
    client.put_object(store.data, "digits/more/extra.bin", io.BytesIO(b"\1" * (20 << 20)), 20 << 20, part_size=5 << 20)
    client.put_object(store.data, "elsewhere/private.csv", io.BytesIO(b"no"), 2)
    return store


async def register(
    platform: Platform, server: S3Server, store: Store, name: str = "rgw", *, presigned_urls: bool = False
) -> connections_pb2.Connection:
    stub = connections_pb2_grpc.ConnectionServiceStub(platform.channel)
    created: connections_pb2.Connection = await stub.CreateConnection(
        connections_pb2.CreateConnectionRequest(
            connection_id=name,
            connection=connections_pb2.Connection(
                endpoint=server.url,
                region=REGION,
                access_key_id=store.user.access_key,
                secret_access_key=store.user.secret_key,
                presigned_urls=presigned_urls,
            ),
            request_id=uuid.uuid4().hex,
        )
    )
    return created


# The command checks what it was staged, tries to read outside its grant, and writes results.
COMMAND = textwrap.dedent(
    """\
    import os, pathlib, hashlib
    data = pathlib.Path(os.environ["DATA_DIR"])
    rows = (data / "train.csv").read_text().splitlines()
    extra = (data / "more" / "extra.bin").read_bytes()
    out = pathlib.Path(os.environ["RESULT_DIR"])
    (out / "model").mkdir()
    (out / "model" / "weights.txt").write_text(f"{len(rows)} rows, extra {hashlib.sha256(extra).hexdigest()}")
    (out / "big.bin").write_bytes(b"\\2" * (40 << 20))
    print("trained on", len(rows), "rows")
    """
)


def manifest(store: Store, command: str = "python train.py", connection: str = "rgw") -> str:
    return textwrap.dedent(
        f"""\
        name: s3-run
        framework: {{name: python}}
        command: {json.dumps(command)}
        resources: {{gpus: 1}}
        data: {{connection: {connection}, bucket: {store.data}, prefix: digits}}
        results: {{connection: {connection}, bucket: {store.results}}}
        """
    )


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_run_with_data_and_results_on_rgw_completes(platform: Platform, s3_server: S3Server) -> None:
    store = s3_store(s3_server)
    await register(platform, s3_server, store)
    roles_before = set(s3_server.grant_roles())

    run = await submit(platform.client, manifest(store), pack({"train.py": COMMAND}))
    done = await wait_for(platform.client, run.name, timeout=180)

    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
    run_id = run.name.rsplit("/", 1)[-1]
    keys = sorted(o.object_name for o in store.client.list_objects(store.results, prefix=f"{run_id}/", recursive=True))
    assert keys == [f"{run_id}/big.bin", f"{run_id}/logs/training.log", f"{run_id}/model/weights.txt"]
    weights = store.client.get_object(store.results, f"{run_id}/model/weights.txt").read().decode()
    assert weights.startswith("1001 rows, extra ")
    assert store.client.stat_object(store.results, f"{run_id}/big.bin").size == 40 << 20
    log = store.client.get_object(store.results, f"{run_id}/logs/training.log").read().decode()
    assert "trained on 1001 rows" in log and "staged 2 files" in log
    # The run's grant ended with it: its role is gone from the store.
    assert await _eventually(lambda: set(s3_server.grant_roles()) <= roles_before)
    # `dlaas download` fetches the results and logs from the connection, and the model code.
    target = platform.jobs_dir.parent / "dl"
    code, out = await cli(platform, "download", run_id, "--to", str(target))
    assert code == 0, out
    assert (target / "model" / "weights.txt").read_text() == weights
    assert (target / "big.bin").stat().st_size == 40 << 20
    assert "trained on 1001 rows" in (target / "logs" / "training.log").read_text()
    assert (target / "code" / "model.tar.gz").is_file()
    assert store.user.secret_key not in out


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_run_on_a_store_without_sts_completes_with_presigned_urls(
    platform: Platform, s3_server: S3Server
) -> None:
    store = s3_store(s3_server)
    await register(platform, s3_server, store, presigned_urls=True)

    run = await submit(platform.client, manifest(store), pack({"train.py": COMMAND}))
    done = await wait_for(platform.client, run.name, timeout=180)

    assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
    run_id = run.name.rsplit("/", 1)[-1]
    keys = sorted(o.object_name for o in store.client.list_objects(store.results, prefix=f"{run_id}/", recursive=True))
    assert keys == [f"{run_id}/big.bin", f"{run_id}/logs/training.log", f"{run_id}/model/weights.txt"]
    assert store.client.stat_object(store.results, f"{run_id}/big.bin").size == 40 << 20
    config = json.loads(next(platform.jobs_dir.rglob("runner.json")).read_text())
    assert "presigned" in config["data_s3"] and "secret_access_key" not in json.dumps(config)


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_cancelled_runs_grant_stops_working(platform: Platform, s3_server: S3Server) -> None:
    store = s3_store(s3_server)
    await register(platform, s3_server, store)
    roles_before = set(s3_server.grant_roles())
    run = await submit(platform.client, manifest(store, command="sleep 120"))
    await wait_for(platform.client, run.name, {run_pb2.RUN_STATE_RUNNING}, timeout=120)
    # What the learner holds: the grant's credentials in its runner.json.
    config = json.loads(next(platform.jobs_dir.rglob("runner.json")).read_text())
    data = config["data_s3"]
    holder = Minio(
        s3_server.endpoint,
        data["access_key_id"],
        data["secret_access_key"],
        session_token=data["session_token"],
        secure=False,
        region=REGION,
    )
    assert holder.get_object(store.data, "digits/train.csv").read() == TRAIN
    assert _denied(lambda: holder.get_object(store.data, "elsewhere/private.csv").read())

    await platform.client.CancelRun(gateway_pb2.CancelRunRequest(name=run.name))
    done = await wait_for(platform.client, run.name, timeout=120)

    assert done.status.state == run_pb2.RUN_STATE_CANCELLED
    assert await _eventually(lambda: _denied(lambda: holder.get_object(store.data, "digits/train.csv").read()))
    assert set(s3_server.grant_roles()) <= roles_before


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_connections_cli_adds_lists_and_removes_without_showing_the_secret(platform: Platform) -> None:
    secret = "cli-SECRET-" + uuid.uuid4().hex

    async def dlaas(*args: str) -> tuple[int, str]:
        return await cli(platform, *args, env={"THE_SECRET": secret})

    added = await dlaas(
        "connections", "add", "my-store", "--endpoint", "http://127.0.0.1:9", "--access-key", "AKIAEXAMPLE1234",
        "--secret-key-env", "THE_SECRET",
    )  # fmt: skip
    listed = await dlaas("connections", "ls")
    as_json = await dlaas("connections", "ls", "-o", "json")
    duplicate = await dlaas(
        "connections", "add", "my-store", "--endpoint", "http://127.0.0.1:9", "--access-key", "K",
        "--secret-key-env", "THE_SECRET",
    )  # fmt: skip
    removed = await dlaas("connections", "rm", "my-store")
    after = await dlaas("connections", "ls", "-o", "json")

    assert added == (0, "my-store: http://127.0.0.1:9 (key …1234)\n")
    assert listed[0] == 0 and "my-store" in listed[1] and "STS" in listed[1]
    assert json.loads(as_json[1])["connections"][0]["access_key_hint"] == "…1234"
    assert duplicate[0] == 1 and "ALREADY_EXISTS" in duplicate[1]
    assert removed == (0, "removed my-store\n")
    assert json.loads(after[1]) == {"connections": []}
    for _, out in (added, listed, as_json, duplicate, removed):
        assert secret not in out and "AKIAEXAMPLE1234" not in out


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_run_on_an_unknown_connection_fails_with_the_reason(platform: Platform) -> None:
    store_manifest = manifest(Store(S3User("", "", ""), None, "data-none", "results-none"), connection="missing")  # type: ignore[arg-type]

    run = await submit(platform.client, store_manifest)
    done = await wait_for(platform.client, run.name, timeout=120)

    assert done.status.state == run_pb2.RUN_STATE_FAILED
    assert "connection missing is not registered" in done.status.message


async def cli(platform: Platform, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs `dlaas ARGS` against the platform's gateway: (exit code, output)."""
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "dlaas"),
        *args,
        env={**os.environ, "DLAAS_ENDPOINT": platform.gateway.address, "DLAAS_API_KEY": platform.key, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


def _denied(action: object) -> bool:
    try:
        action()  # type: ignore[operator]
    except S3Error as exc:
        return exc.code == "AccessDenied"
    return False


async def _eventually(check: object, timeout: float = 10) -> bool:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        if check():  # type: ignore[operator]
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


__all__ = ["COMMAND", "Path", "Store", "manifest", "pack", "register", "s3_store"]
