"""After runs on an S3 store, no planted secret is anywhere it could leak from.

Two ways credentials come in: a connection registered through the public API, and keys written
inline in an FfDL manifest (moved into a connection at submission). Both runs complete on a
real Ceph RGW; then every log record (DEBUG and up, every library), everything the processes
printed, every file under the test's directory (the four SQLite databases' raw bytes, the
runners' job directories, the local object store), every exported span and every RPC answer
is searched for the planted strings.
"""

from __future__ import annotations

import logging
import textwrap
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from dlaas.gateway.v1 import connections_pb2, connections_pb2_grpc, gateway_pb2
from dlaas.types.v1 import run_pb2
from tests.e2e.test_s3_runs import COMMAND, manifest, pack, register, s3_store
from tests.s3 import S3Server
from tests.support import Platform, submit, wait_for

pytestmark = pytest.mark.e2e


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
    }
    answers: list[object] = [await register(platform, s3_server, registered)]

    first = await submit(platform.client, manifest(registered), pack({"train.py": COMMAND}))
    second = await submit(
        platform.client,
        ffdl_manifest(s3_server.url, inline.user.access_key, inline.user.secret_key, inline.data, inline.results),
        pack({"train.py": COMMAND}),
    )
    answers += [first, second]
    for run in (first, second):
        done = await wait_for(platform.client, run.name, timeout=180)
        assert done.status.state == run_pb2.RUN_STATE_COMPLETED, list(done.status.log_tail)
        answers.append(done)
        answers.append(await platform.client.GetRun(gateway_pb2.GetRunRequest(name=run.name)))
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
    assert haystacks["spans"] and haystacks["log records"]
    leaks = [(where, secret[:12]) for where, text in haystacks.items() for secret in planted if secret in text]
    assert not leaks
