"""Fuzzing the public API through the real gateway: generated manifests (runs and experiments),
code archives and RPC messages. Bad input is INVALID_ARGUMENT with field violations (a well-formed
name of nothing is NOT_FOUND), never INTERNAL or UNKNOWN, never a crash, never a stored row, run
or code object. `test_the_fuzzers_sent_at_least_10000_requests` counts what the others sent.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import sqlite3
import tarfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlaas.credentials import bearer, with_headers
from dlaas.gateway.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    experiments_pb2,
    experiments_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
)
from dlaas.types.v1 import run_pb2
from tests.conftest import DatabaseFactory
from tests.support import ADMIN_KEY, Platform, start_platform

pytestmark = pytest.mark.fuzz

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
# Examples per test, 10,000 in all; each sends one request or more.
EXAMPLES = {
    "manifests": 2500,
    "experiment_manifests": 1500,
    "code_archives": 1000,
    "run_requests": 2000,
    "data_requests": 1500,
    "cluster_requests": 1500,
}
SENT: Counter[str] = Counter()  # examples run, per test
FAILURES_BEFORE: list[int] = []  # the session's failed tests when this module's platform started
# The fuzzing gateway's archive limits: small, so that "too large" and "too many files" are cheap to make.
MAX_ARCHIVE_BYTES = 64 * 1024
MAX_ARCHIVE_FILES = 50
CODE_BUCKET = "dlaas-code"
# What a refused request must leave as it was: table → (its service's database, the count).
ROW_COUNTS = {
    "gateway_run_specs": ("gateway", "SELECT COUNT(*) FROM gateway_run_specs"),
    "gateway_experiments": ("gateway", "SELECT COUNT(*) FROM gateway_experiments"),
    "scheduler_runs": ("scheduler", "SELECT COUNT(*) FROM scheduler_runs"),
}


@dataclass
class Fuzzed:
    """The platform under fuzzing: a blocking channel as its account, the admin's, and its databases."""

    channel: grpc.Channel
    admin: grpc.Channel
    root: Path
    databases: dict[str, sqlite3.Connection] = field(default_factory=dict)  # read-only, opened once

    @property
    def runs(self) -> gateway_pb2_grpc.TrainingServiceStub:
        return gateway_pb2_grpc.TrainingServiceStub(self.channel)

    def rows(self) -> dict[str, int]:
        """How many rows the gateway (run specs, experiments) and the scheduler (runs) hold, exactly."""
        counts = {}
        for table, (service, query) in ROW_COUNTS.items():
            if service not in self.databases:
                self.databases[service] = sqlite3.connect(f"file:{self.root / f'{service}.db'}?mode=ro", uri=True)
            counts[table] = int(self.databases[service].execute(query).fetchone()[0])
        return counts

    def listed_runs(self) -> set[str]:
        """Every run of the account, page by page (no page size that could cap the count)."""
        names: set[str] = set()
        token = ""
        while True:
            page = self.runs.ListRuns(gateway_pb2.ListRunsRequest(page_size=500, page_token=token), timeout=30)
            names |= {run.name for run in page.runs}
            token = page.next_page_token
            if not token:
                return names

    def code_objects(self) -> list[str]:
        listed = self.runs.ListObjects(
            gateway_pb2.ListObjectsRequest(location=run_pb2.ObjectLocation(bucket=CODE_BUCKET), page_size=1000),
            timeout=30,
        )
        assert not listed.next_page_token
        return sorted(o.key for o in listed.objects)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Fuzzed]:
    """The whole platform on an event loop of its own thread, so that hypothesis can call it synchronously."""
    FAILURES_BEFORE.append(request.session.testsfailed)
    root = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    limits = {"max_code_archive_bytes": MAX_ARCHIVE_BYTES, "max_code_archive_files": MAX_ARCHIVE_FILES}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        database = DatabaseFactory("sqlite", root, None)
        ready["platform"] = loop.run_until_complete(start_platform(database, root, gateway=limits))
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    while "platform" not in ready:
        thread.join(0.05)
    platform: Platform = ready["platform"]
    fuzzed = Fuzzed(
        with_headers(grpc.insecure_channel(platform.gateway.address), bearer(platform.key)),
        with_headers(grpc.insecure_channel(platform.gateway.address), bearer(ADMIN_KEY)),
        root,
    )
    # The premium tier's submission rate (bursts of 10,000) is far above what the fuzzers submit:
    # no generated request is refused for its rate.
    cluster_pb2_grpc.AdminServiceStub(fuzzed.admin).SetAccountTier(
        cluster_pb2.SetAccountTierRequest(account="accounts/default", tier="premium"), timeout=30
    )
    yield fuzzed
    fuzzed.channel.close()
    fuzzed.admin.close()
    for database in fuzzed.databases.values():
        database.close()
    asyncio.run_coroutine_threadsafe(platform.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    found: list[str] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [v.field for v in bad.field_violations]
    return found


def assert_invalid(error: grpc.RpcError, *context: object) -> list[str]:
    """The one way to refuse bad input: INVALID_ARGUMENT naming the fields; returns them."""
    code = error.code()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, error.details(), *context)
    fields = violations(error)
    assert fields, ("INVALID_ARGUMENT without field violations", error.details(), *context)
    return fields


def reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def assert_refused_cleanly(error: grpc.RpcError, *context: object) -> None:
    """Bad input is INVALID_ARGUMENT with field violations; a well-formed name of nothing, NOT_FOUND;
    a location naming a connection the account has not registered, FAILED_PRECONDITION
    (CONNECTION_NOT_FOUND: register it first)."""
    if error.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(error) == "CONNECTION_NOT_FOUND":
        return
    if error.code() != grpc.StatusCode.NOT_FOUND:
        assert_invalid(error, *context)


# ---- manifests ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.sampled_from(["../../etc/passwd", "/abs/path", "a\\b", "x\x00y", "ÿ" * 300, "💥", "-1", "1e400", "9" * 5000]),
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "name",
        "framework",
        "command",
        "resources",
        "data",
        "results",
        "environment",
        "max_runtime",
        "priority",
        "gpus",
        "learners",
        "data_stores",
        "model_definition",
        "training_data_reference",
        "memory",
        "cpus",
    ]
)
documents = st.dictionaries(keys, values, max_size=8)
valid_base = {"name": "fuzz", "framework": {"name": "python"}, "command": "true", "resources": {"gpus": 0}}
mutations = st.dictionaries(keys, values, max_size=3).map(lambda changes: {**valid_base, **changes})
bombs = st.sampled_from(
    [
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n",
        "x: " + "[" * 500 + "]" * 500,
        "x: !!python/object/apply:os.system ['true']\n",
        "name: a\nname: b\ncommand: c\nframework: python\n",
        "\ufeff" + "name: x\n" * 2,
        "a" * (70 * 1024),
    ]
)
texts = st.one_of(
    documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    mutations.map(lambda d: json.dumps(d, default=str)),
    bombs,
    st.text(max_size=300),
)


@settings(max_examples=EXAMPLES["manifests"], deadline=None, suppress_health_check=list(HealthCheck))
@given(text=texts, validate_only=st.booleans())
def test_generated_manifests_are_accepted_or_refused_cleanly(gateway: Fuzzed, text: str, validate_only: bool) -> None:
    SENT["manifests"] += 1
    before = gateway.rows()
    try:
        run = gateway.runs.CreateRun(
            gateway_pb2.CreateRunRequest(manifest=text, validate_only=validate_only), timeout=30
        )
    except grpc.RpcError as error:
        assert_invalid(error, text[:300])
        assert gateway.rows() == before, "a refused submission left a row behind"
        return
    if validate_only:
        assert not run.name and gateway.rows() == before
    else:
        assert run.status.state == run_pb2.RUN_STATE_QUEUED
        ACCEPTED_RUNS.add(run.name)
        gateway.runs.CancelRun(gateway_pb2.CancelRunRequest(name=run.name), timeout=30)


ACCEPTED_RUNS: set[str] = set()


def test_the_runs_stored_are_exactly_the_accepted_ones(gateway: Fuzzed) -> None:
    """After the manifests: the account's runs, counted page by page, are the accepted ones."""
    if not SENT["manifests"]:
        pytest.skip("counts what test_generated_manifests_are_accepted_or_refused_cleanly submitted")
    listed = gateway.listed_runs()
    assert listed == ACCEPTED_RUNS
    assert gateway.rows()["scheduler_runs"] == len(listed) == gateway.rows()["gateway_run_specs"]


# ---- experiment manifests -----------------------------------------------------------------------

experiment_keys = st.sampled_from(
    [
        "method",
        "objective",
        "parameters",
        "max_runs",
        "max_parallel_runs",
        "max_failed_runs",
        "retries",
        "seed",
        "asha",
        "objective_grace_s",
        "grid",
        "metric",
    ]
)
valid_section = {
    "method": "random",
    "objective": {"metric": "loss", "goal": "minimize"},
    "max_runs": 1,
    "parameters": {"lr": {"type": "double", "min": 0.001, "max": 0.1}},
}
parameter_specs = st.dictionaries(
    st.one_of(st.sampled_from(["lr", "x", "9bad", "a-b", "_", ""]), st.text(max_size=10)),
    st.one_of(
        values,
        st.fixed_dictionaries(
            {"type": st.sampled_from(["double", "int", "float", "categorical", "log"]), "min": scalars, "max": scalars},
            optional={"scale": st.sampled_from(["linear", "log", "exp"]) | scalars, "steps": scalars},
        ),
        st.fixed_dictionaries({"values": st.lists(scalars, max_size=4) | scalars}),
    ),
    max_size=3,
)
sections = st.one_of(
    values,
    st.dictionaries(experiment_keys, values, max_size=6),
    st.dictionaries(experiment_keys, values, max_size=3).map(lambda changes: {**valid_section, **changes}),
    parameter_specs.map(lambda space: {**valid_section, "parameters": space}),
    st.builds(
        lambda method, runs, asha: {**valid_section, "method": method, "max_runs": runs, "asha": asha},
        st.sampled_from(["grid", "random", "asha", "bayes", ""]),
        st.integers(-5, 5000),
        st.dictionaries(st.sampled_from(["min_step", "max_step", "reduction_factor", "eta"]), scalars, max_size=3),
    ),
)
experiment_texts = st.one_of(
    st.builds(lambda run, section: {**run, "experiment": section}, mutations, sections).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True)
    ),
    st.builds(lambda section: {**valid_base, "experiment": section}, sections).map(
        lambda d: json.dumps(d, default=str)
    ),
    bombs.map(lambda bomb: bomb if bomb.startswith("a" * 10) else bomb + "experiment: {method: grid}\n"),
    st.text(max_size=300),
)


@settings(max_examples=EXAMPLES["experiment_manifests"], deadline=None, suppress_health_check=list(HealthCheck))
@given(text=experiment_texts, validate_only=st.booleans())
def test_generated_experiment_manifests_are_accepted_or_refused_cleanly(
    gateway: Fuzzed, text: str, validate_only: bool
) -> None:
    SENT["experiment_manifests"] += 1
    experiments = experiments_pb2_grpc.ExperimentServiceStub(gateway.channel)
    before = gateway.rows()
    try:
        created = experiments.CreateExperiment(
            experiments_pb2.CreateExperimentRequest(manifest=text, validate_only=validate_only), timeout=30
        )
    except grpc.RpcError as error:
        assert_invalid(error, text[:300])
        assert gateway.rows() == before, "a refused experiment left a row behind"
        return
    if validate_only:
        assert not created.name and gateway.rows() == before
    else:
        # Accepted: stopped at once (its trials, if any started, are cancelled with it).
        cancelled = experiments.CancelExperiment(experiments_pb2.CancelExperimentRequest(name=created.name), timeout=30)
        assert cancelled.state == experiments_pb2.EXPERIMENT_STATE_CANCELLED


# ---- code archives ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    size: int | None = None  # a size claimed in the header, with no data behind it


@dataclass(frozen=True)
class Archive:
    """How to make one bad archive. Examples are these recipes, not the bytes, so that what
    hypothesis prints of a failing one stays short."""

    members: tuple[Member, ...] = ()
    compress: bool = False
    garbage: bytes = b""  # not a tar at all
    padded_to: int = 0  # a gzip header, then zeros to this many bytes: too large
    cut_at: int | None = None  # a tar of `members` cut short (see cut_short)

    def data(self) -> bytes:
        if self.garbage:
            return self.garbage
        if self.padded_to:
            return b"\x1f\x8b" + bytes(self.padded_to - 2)
        if self.cut_at is not None:
            return cut_short(self.members, self.cut_at, self.compress)
        return pack_members(self.members, self.compress)


def pack_members(members: Sequence[Member], compress: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type, info.linkname = member.kind, member.link
            if member.size is not None:
                info.size = member.size
                tar.fileobj.write(info.tobuf(tar.format, tar.encoding, tar.errors))
                break  # nothing can follow a header whose data is missing
            data = b"print('ok')\n" if member.kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def cut_short(files: Sequence[Member], at: int, compress: bool) -> bytes:
    """A tar of `files` (regular files) cut inside the data of one of them, or inside the first
    header (a cut between members, or in a later header, reads as a shorter archive: not bad)."""
    whole = pack_members(files, compress=False)
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        members = tar.getmembers()
    member = members[at % len(members)]
    cut = member.offset_data + at % member.size if at % 3 else 1 + at % 511
    return gzip.compress(whole[:cut]) if compress else whole[:cut]


def with_bad_member(safe: list[Member], bad: Member, at: int, compress: bool) -> Archive:
    return Archive((*safe[:at], bad, *safe[at:]), compress)


def too_many_files(name: str, extra: int, compress: bool) -> Archive:
    return Archive(tuple(Member(f"{name}-{i}") for i in range(MAX_ARCHIVE_FILES + 1 + extra)), compress)


def directory(name: str) -> Member:
    return Member(name, tarfile.DIRTYPE)


def symlink(name: str, target: str) -> Member:
    return Member(name, tarfile.SYMTYPE, target)


def hard_link(name: str, target: str) -> Member:
    return Member(name, tarfile.LNKTYPE, target)


def special(name: str, kind: bytes) -> Member:
    return Member(name, kind)


def claiming_over_1_gib(name: str) -> Member:
    return Member(name, size=(1 << 30) + 1)


def link_to_sibling(name: str) -> Member:
    return symlink(name + "-link", name.rsplit("/", 1)[-1])


safe_names = st.from_regex(r"[a-z]{1,8}(/[a-z]{1,8}){0,2}(\.py)?", fullmatch=True)
safe_members = st.one_of(
    st.builds(Member, safe_names), st.builds(directory, safe_names), st.builds(link_to_sibling, safe_names)
)
climbing = st.sampled_from(["../x.py", "a/../../x.py", "./../x", "a/b/../../../x", "..", "../../etc/passwd"])
absolute = st.sampled_from(["/x.py", "/etc/passwd", "//x", "/x/"])
# Link targets outside the archive from any member of safe_names (at most three levels deep).
out_of_root = st.sampled_from(["../../../../x.py", "a/../../../../../etc/passwd", "/etc/passwd", "/", "//x"])
bad_members = st.one_of(
    st.builds(Member, climbing | absolute),
    st.builds(directory, climbing | absolute),
    st.builds(symlink, safe_names, out_of_root),
    st.builds(hard_link, safe_names, out_of_root),
    st.builds(special, safe_names, st.sampled_from([tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])),
    st.builds(claiming_over_1_gib, safe_names),
)
unsafe_archives = st.builds(
    with_bad_member, st.lists(safe_members, max_size=4), bad_members, st.integers(0, 4), st.booleans()
)
bad_archives = st.one_of(
    unsafe_archives,
    unsafe_archives,  # twice as likely as the others: the most varied kind
    st.builds(too_many_files, safe_names, st.integers(0, 5), st.booleans()),
    st.builds(Archive, padded_to=st.integers(MAX_ARCHIVE_BYTES + 1, MAX_ARCHIVE_BYTES + 4096)),
    # Not a tar archive: garbage, or a good one cut short.
    st.builds(Archive, garbage=st.binary(min_size=1, max_size=300).filter(any)),
    st.builds(
        Archive,
        members=st.lists(st.builds(Member, safe_names), min_size=1, max_size=4).map(tuple),
        compress=st.booleans(),
        cut_at=st.integers(0, 10**6),
    ),
)
ARCHIVE_RUN = "name: fuzz\nframework: {name: python}\ncommand: python x.py\nresources: {gpus: 0}\n"
ARCHIVE_EXPERIMENT = ARCHIVE_RUN + yaml.safe_dump({"experiment": valid_section})


@settings(max_examples=EXAMPLES["code_archives"], deadline=None, suppress_health_check=list(HealthCheck))
@given(archive=bad_archives, experiment=st.booleans())
def test_bad_code_archives_are_refused_and_nothing_is_stored(
    gateway: Fuzzed, archive: Archive, experiment: bool
) -> None:
    """Traversal, links out, devices, too many files, too large, not a tar: INVALID_ARGUMENT naming
    code_archive, for a run and for an experiment; no row, no run, no code object."""
    SENT["code_archives"] += 1
    data = archive.data()
    before, code_before = gateway.rows(), gateway.code_objects()
    request_id = uuid.uuid4().hex
    experiments = experiments_pb2_grpc.ExperimentServiceStub(gateway.channel)
    try:
        if experiment:
            created = experiments.CreateExperiment(
                experiments_pb2.CreateExperimentRequest(
                    manifest=ARCHIVE_EXPERIMENT, code_archive=data, request_id=request_id
                ),
                timeout=30,
            )
            # Accepted: stopped before it runs, then reported.
            experiments.CancelExperiment(experiments_pb2.CancelExperimentRequest(name=created.name), timeout=30)
        else:
            run = gateway.runs.CreateRun(
                gateway_pb2.CreateRunRequest(manifest=ARCHIVE_RUN, code_archive=data, request_id=request_id),
                timeout=30,
            )
            gateway.runs.CancelRun(gateway_pb2.CancelRunRequest(name=run.name), timeout=30)
    except grpc.RpcError as error:
        assert assert_invalid(error, archive) == ["code_archive"], archive
    else:
        pytest.fail(f"a bad code archive was accepted ({'CreateExperiment' if experiment else 'CreateRun'}): {archive}")
    assert gateway.rows() == before, "a refused archive left a row behind"
    assert gateway.code_objects() == code_before, "a refused archive was stored"


# ---- RPC messages ------------------------------------------------------------------------------

names = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        ["accounts/default/runs/", "accounts/other/runs/run-1", "accounts//runs/x", "../x", "run-" + "a" * 70]
    ),
    st.builds(lambda s: f"accounts/default/runs/{s}", st.text(max_size=40)),
)
tokens = st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.hex()), st.just("eyJvIjogLTF9"))
locations = st.builds(
    run_pb2.ObjectLocation,
    connection=st.one_of(st.just(""), st.text(max_size=20)),
    bucket=st.one_of(st.text(max_size=70), st.sampled_from(["ok-bucket", "..", "a", "UPPER", "x" * 64])),
    prefix=st.one_of(
        st.text(max_size=40), st.sampled_from(["../../secret", "/etc", "a/../../b", "a\x00b", "ok/prefix"])
    ),
)


def each_refused_cleanly(calls: list[Callable[[], object]], *context: object) -> None:
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            assert error.code() not in NEVER, (error.code(), error.details(), *context)
            assert_refused_cleanly(error, *context)


@settings(max_examples=EXAMPLES["run_requests"], deadline=None, suppress_health_check=list(HealthCheck))
@given(name=names, token=tokens, size=st.integers(-(2**31), 2**31 - 1))
def test_generated_run_requests_never_fail_inside(gateway: Fuzzed, name: str, token: str, size: int) -> None:
    SENT["run_requests"] += 1
    stub = gateway.runs
    each_refused_cleanly(
        [
            lambda: stub.GetRun(gateway_pb2.GetRunRequest(name=name), timeout=30),
            lambda: stub.CancelRun(gateway_pb2.CancelRunRequest(name=name), timeout=30),
            lambda: stub.ListRuns(gateway_pb2.ListRunsRequest(page_size=size, page_token=token), timeout=30),
            lambda: stub.CreateRunResultsGrant(gateway_pb2.CreateRunResultsGrantRequest(name=name), timeout=30),
            lambda: stub.ListUsageRecords(
                gateway_pb2.ListUsageRecordsRequest(run=name, page_size=size, page_token=token), timeout=30
            ),
            lambda: list(stub.StreamRunLogs(gateway_pb2.StreamRunLogsRequest(name=name), timeout=30)),
        ],
        name,
        token,
        size,
    )


@settings(max_examples=EXAMPLES["data_requests"], deadline=None, suppress_health_check=list(HealthCheck))
@given(location=locations, mode=st.integers(-5, 5), size=st.integers(-100, 10**6), token=tokens)
def test_generated_data_requests_never_fail_inside(
    gateway: Fuzzed, location: run_pb2.ObjectLocation, mode: int, size: int, token: str
) -> None:
    SENT["data_requests"] += 1
    stub = gateway.runs
    each_refused_cleanly(
        [
            lambda: stub.CreateDataGrant(gateway_pb2.CreateDataGrantRequest(location=location, mode=mode), timeout=30),  # type: ignore[arg-type]
            lambda: stub.ListObjects(
                gateway_pb2.ListObjectsRequest(location=location, page_size=size, page_token=token), timeout=30
            ),
        ],
        location,
        mode,
    )


@settings(max_examples=EXAMPLES["cluster_requests"], deadline=None, suppress_health_check=list(HealthCheck))
@given(account=st.text(max_size=80), tier=st.text(max_size=20), node=st.text(max_size=40), token=tokens)
def test_generated_cluster_requests_never_fail_inside(
    gateway: Fuzzed, account: str, tier: str, node: str, token: str
) -> None:
    SENT["cluster_requests"] += 1
    cluster = cluster_pb2_grpc.ClusterServiceStub(gateway.channel)
    admin = cluster_pb2_grpc.AdminServiceStub(gateway.admin)
    each_refused_cleanly(
        [
            lambda: cluster.ListQueue(cluster_pb2.ListQueueRequest(parent=account, page_token=token), timeout=30),
            lambda: admin.SetAccountTier(cluster_pb2.SetAccountTierRequest(account=account, tier=tier), timeout=30),
            lambda: admin.DrainNode(cluster_pb2.DrainNodeRequest(name=node), timeout=30),
        ],
        account,
        tier,
        node,
    )


def test_the_fuzzers_sent_at_least_10000_requests(request: pytest.FixtureRequest) -> None:
    """Counts the examples the tests above ran (hypothesis may stop early when it runs out of new ones)."""
    if set(SENT) != set(EXAMPLES):
        pytest.skip(f"counts the examples of every fuzz test; only {sorted(SENT)} ran")
    if request.session.testsfailed > FAILURES_BEFORE[0]:
        pytest.skip("a fuzz test failed, and so stopped before its examples ran out: nothing to count")
    assert sum(SENT.values()) >= 10_000, SENT
