"""After runs on an S3 store, no planted secret is anywhere it could leak from.

Two ways credentials come in: a connection registered through the public API, and keys written
inline in an FfDL manifest (moved into a connection at submission). Both runs complete on a
real Ceph RGW; then every log record (DEBUG and up, every library), everything the processes
printed, every file under the test's directory (the four SQLite databases' raw bytes, the
runners' job directories, the local object store, what `dlaas download` fetched), every
exported span, every RPC answer and the output of `dlaas data upload|ls|rm` and `dlaas download`
on the connection is searched for the planted strings. The run tokens and the grants' temporary
keys, read from each runner.json while its attempt is live (the one file that holds them then),
are nowhere once the runs have ended: not even in runner.json.
"""

from __future__ import annotations

import logging
import textwrap
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dlaas.gateway.v1 import connections_pb2, connections_pb2_grpc, gateway_pb2
from dlaas.runner.config import RunnerConfig
from dlaas.types.v1 import run_pb2
from tests.e2e.test_s3_runs import COMMAND, cli, manifest, pack, register, s3_store
from tests.s3 import S3Server
from tests.support import ADMIN_KEY, SERVICE_TOKEN, Platform, submit, wait_for

pytestmark = pytest.mark.e2e

# Prepended to the command: it waits (in its model folder) for a file `release` in its job directory.
HELD = "import pathlib, time\nwhile not pathlib.Path('../release').exists():\n    time.sleep(0.05)\n"


def ffdl_manifest(endpoint: str, access_key: str, secret: str, data: str, results: str) -> str:
    return textwrap.dedent(
        f"""\
        name: ffdl-inline
        version: "1.0"
        gpus: 1
        memory: 1Gb
        learners: 1
        data_stores:
          - id: my-store
            type: s3_datastore
            training_data:
              container: {data}
              prefix: digits
            training_results:
              container: {results}
            connection:
              auth_url: {endpoint}
              user_name: {access_key}
              password: {secret}
        framework:
          name: python
          command: python train.py
        """
    )


@pytest.mark.parametrize("databases", ["sqlite"], indirect=True)
async def test_no_planted_secret_leaks_after_runs_on_s3(
    platform: Platform,
    s3_server: S3Server,
    spans: InMemorySpanExporter,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    registered = s3_store(s3_server, secret="PlantedRegistered" + uuid.uuid4().hex)
    inline = s3_store(s3_server, secret="PlantedInline" + uuid.uuid4().hex)
    planted = {
        registered.user.secret_key,
        registered.user.access_key,
        inline.user.secret_key,
        inline.user.access_key,
        platform.key,  # the account's API key
        ADMIN_KEY,
        SERVICE_TOKEN,
    }
    answers: list[object] = [await register(platform, s3_server, registered)]

    first = await submit(platform.client, manifest(registered), pack({"train.py": HELD + COMMAND}))
    second = await submit(
        platform.client,
        ffdl_manifest(s3_server.url, inline.user.access_key, inline.user.secret_key, inline.data, inline.results),
        pack({"train.py": HELD + COMMAND}),
    )
    answers += [first, second]
    # What each live attempt holds: its run token and its grant's temporary keys, in runner.json only
    # (mode 0600). The runs take turns (a free account's one GPU); each waits to be released.
    run_secrets: set[str] = set()
    for run in (first, second):
        running = await wait_for(platform.client, run.name, {run_pb2.RUN_STATE_RUNNING}, timeout=180)
        assert running.status.state == run_pb2.RUN_STATE_RUNNING, list(running.status.log_tail)
        job = platform.jobs_dir / "default" / f"{run.name.rsplit('/', 1)[-1]}-a1"
        assert (job / "runner.json").stat().st_mode & 0o077 == 0, "runner.json is readable by others"
        held = RunnerConfig.load(job / "runner.json")
        run_secrets.add(held.run_token)
        for location in (held.code_s3, held.data_s3, held.results_s3):
            if location is not None and location.secret_access_key:
                run_secrets |= {location.access_key_id, location.secret_access_key, location.session_token}
        (job / "release").touch()
        done = await wait_for(platform.client, run.name, timeout=180)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
        answers.append(done)
        answers.append(await platform.client.GetRun(gateway_pb2.GetRunRequest(name=run.name)))
    assert len(run_secrets) >= 2 + 2 * 3
    connections = connections_pb2_grpc.ConnectionServiceStub(platform.channel)
    listed = await connections.ListConnections(connections_pb2.ListConnectionsRequest())
    answers += [listed, await platform.client.ListRuns(gateway_pb2.ListRunsRequest())]
    # The inline credentials became a connection of the account; the run's results are on its store.
    assert sorted(c.name.rsplit("/", 1)[-1].split("-")[0] for c in listed.connections) == ["inline", "rgw"]
    second_id = second.name.rsplit("/", 1)[-1]
    assert any(
        o.object_name == f"{second_id}/logs/training.log"
        for o in inline.client.list_objects(inline.results, prefix=f"{second_id}/", recursive=True)
    )

    # The CLI's data verbs and `dlaas download` on the registered connection: grants, never its keys.
    upload_dir = tmp_path / "cli-upload"
    (upload_dir / "sub").mkdir(parents=True)
    (upload_dir / "sub" / "x.csv").write_text("1,2\n")
    for args in (
        ("data", "upload", str(upload_dir), f"{registered.data}/cli", "--connection", "rgw"),
        ("data", "ls", f"{registered.data}/cli", "--connection", "rgw", "-o", "json"),
        ("data", "rm", f"{registered.data}/cli", "--connection", "rgw", "--yes"),
        ("download", first.name.rsplit("/", 1)[-1], "--to", str(tmp_path / "cli-download")),
    ):
        code, out = await cli(platform, *args)
        assert code == 0, (args, out)
        answers.append(out)
    assert (tmp_path / "cli-download" / "code" / "model.tar.gz").is_file()

    printed = capfd.readouterr()
    haystacks = {
        "log records": caplog.text + "".join(repr(record.__dict__) for record in caplog.records),
        "stdout and stderr": printed.out + printed.err,
        "spans": "".join(span.to_json() for span in spans.get_finished_spans()),
        "rpc answers": "".join(str(answer) for answer in answers),
    }
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.suffix == ".db" for path in files) and any(path.name == "runner.json" for path in files)
    for path in files:
        haystacks[str(path)] = path.read_bytes().decode("latin-1")
        if path.name == "runner.json":  # still there for whoever reads it, without its secrets
            assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            assert '"secrets_removed": true' in haystacks[str(path)], path
    assert haystacks["spans"] and haystacks["log records"]
    leaks = [(where, secret[:12]) for where, text in haystacks.items() for secret in planted if secret in text]
    # The attempts have ended: their run tokens and temporary keys are nowhere, runner.json included.
    leaks += [(where, "run secret") for where, text in haystacks.items() for secret in run_secrets if secret in text]
    assert not leaks
