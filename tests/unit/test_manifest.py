"""The manifest parser: three formats into one RunSpec, every problem reported on the user's own path."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlaas.types.v1 import run_pb2
from services.api_gateway.domain.manifest import (
    MAX_MANIFEST_BYTES,
    InlineConnection,
    ParsedManifest,
    _FastLoader,
    _load,
    _ManifestLoader,
    inline_connection_name,
    parse_manifest,
)
from services.common.errors import InvalidArgument

FRAMEWORKS: dict[str, list[str]] = {"pytorch": ["2.13", "2.12"], "tensorflow": [], "python": []}

DLAAS_MANIFEST = """
name: digits
description: Handwritten digits with a small CNN
framework: {name: PyTorch, version: "2.13"}
command: python train.py --epochs 5
resources: {gpus: 2, gpu_type: V100, cpus: 4, memory: 8GiB, learners: 2}
data: {bucket: digits-data, prefix: mnist/v1/}
results: {bucket: my-results, connection: team-store}
environment: {EPOCHS: 5, LR: 0.010, DEBUG: true, NAME: digits}
max_runtime: 1h30m
evaluation_metrics: [accuracy, loss]
"""

FFDL_MANIFEST = """
name: tf_convolutional_network_tutorial
description: Convolutional network model using tensorflow
version: "1.0"
gpus: 0
cpus: 0.5
memory: 1Gb
learners: 1
data_stores:
  - id: sl-internal-os
    type: mount_cos
    training_data:
      container: tf_training_data
    training_results:
      container: tf_trained_model
    connection:
      auth_url: http://s3.default.svc.cluster.local
      user_name: test
      password: test
framework:
  name: tensorflow
  version: "1.5.0-py3"
  command: >
    python3 convolutional_network.py --trainImagesFile ${DATA_DIR}/train-images-idx3-ubyte.gz
      --trainLabelsFile ${DATA_DIR}/train-labels-idx1-ubyte.gz
evaluation_metrics:
  type: tensorboard
  in: "$JOB_STATE_DIR/logs/tb"
"""

WML_MANIFEST = """
model_definition:
  framework: {name: tensorflow, version: "1.5"}
  name: tf_mnist
  author: {name: Jane, email: jane@example.com}
  description: Simple MNIST model implemented in TF
  execution:
    command: python3 convolutional_network.py --trainImagesFile ${DATA_DIR}/train-images-idx3-ubyte.gz
    compute_configuration:
      name: k80
training_data_reference:
  name: training_data_mnist
  connection: {endpoint_url: "https://s3.example.com", access_key_id: "AKIA...", secret_access_key: "..."}
  source: {bucket: mnist-training-data}
  type: s3
training_results_reference:
  name: training_results_mnist
  connection: {endpoint_url: "https://s3.example.com", access_key_id: "...", secret_access_key: "..."}
  target: {bucket: mnist-training-models}
  type: s3
"""


def parse(manifest: str | bytes, frameworks: dict[str, list[str]] | None = None) -> ParsedManifest:
    return parse_manifest(manifest, frameworks=FRAMEWORKS if frameworks is None else frameworks)


def violations_of(manifest: str | bytes, frameworks: dict[str, list[str]] | None = None) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse(manifest, frameworks)
    return {v.field: v.description for v in caught.value.violations}


def assert_secret_absent(spec: run_pb2.RunSpec, secret: str) -> None:
    assert secret not in str(spec)
    assert secret.encode() not in spec.SerializeToString()


# --- the three formats -----------------------------------------------------------------------


def test_dlaas_manifest_is_normalized() -> None:
    parsed = parse(DLAAS_MANIFEST)

    expected = run_pb2.RunSpec(
        display_name="digits",
        description="Handwritten digits with a small CNN",
        framework=run_pb2.Framework(name="pytorch", version="2.13"),
        command="python train.py --epochs 5",
        resources=run_pb2.Resources(gpus=2, gpu_type="v100", cpus=4, memory_mib=8192, learners=2),
        training_data=run_pb2.ObjectLocation(bucket="digits-data", prefix="mnist/v1/"),
        training_results=run_pb2.ObjectLocation(bucket="my-results", connection="team-store"),
        environment={"EPOCHS": "5", "LR": "0.010", "DEBUG": "true", "NAME": "digits"},
        source_format="dlaas",
        evaluation_metrics=["accuracy", "loss"],
    )
    expected.max_runtime.FromSeconds(5400)
    assert parsed.spec == expected
    assert parsed.inline_connections == []


def test_dlaas_minimal_manifest_gets_the_defaults() -> None:
    spec = parse("name: digits\nframework: pytorch\ncommand: python train.py\n").spec

    assert spec.framework == run_pb2.Framework(name="pytorch", version="")
    assert spec.resources == run_pb2.Resources(gpus=1, gpu_type="", cpus=1, memory_mib=2048, learners=1)
    assert spec.training_results == run_pb2.ObjectLocation(bucket="dlaas-results")
    assert not spec.HasField("training_data")
    assert not spec.HasField("max_runtime")
    assert spec.source_format == "dlaas"


def test_dlaas_manifest_may_be_json() -> None:
    manifest = json.dumps({"name": "digits", "framework": "pytorch:2.12", "command": "python train.py"})

    spec = parse(manifest).spec

    assert spec.framework == run_pb2.Framework(name="pytorch", version="2.12")


@pytest.mark.parametrize(
    ("written", "seconds"),
    [(3600, 3600), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400), ("45", 45)],
)
def test_max_runtime_forms(written: object, seconds: int) -> None:
    manifest = {"name": "n", "framework": "python", "command": "true", "max_runtime": written}

    assert parse(json.dumps(manifest)).spec.max_runtime.seconds == seconds


@pytest.mark.parametrize(
    ("written", "mib"),
    [("2GiB", 2048), ("1Gb", 1024), ("1GB", 1024), ("500MiB", 500), ("1024Mb", 1024), ("512", 512), (256, 256)],
)
def test_memory_units_are_binary(written: object, mib: int) -> None:
    manifest = {"name": "n", "framework": "python", "command": "true", "resources": {"memory": written}}

    assert parse(json.dumps(manifest)).spec.resources.memory_mib == mib


def test_unquoted_numeric_version_keeps_its_spelling() -> None:
    spec = parse("name: n\nframework: {name: tensorflow, version: 1.10}\ncommand: 'true'\n").spec

    assert spec.framework.version == "1.10"


def test_ffdl_example_is_accepted_unchanged() -> None:
    parsed = parse(FFDL_MANIFEST)

    connection = inline_connection_name("http://s3.default.svc.cluster.local", "test")
    assert parsed.spec == run_pb2.RunSpec(
        display_name="tf_convolutional_network_tutorial",
        description="Convolutional network model using tensorflow",
        framework=run_pb2.Framework(name="tensorflow", version="1.5.0-py3"),
        command=(
            "python3 convolutional_network.py --trainImagesFile ${DATA_DIR}/train-images-idx3-ubyte.gz"
            " --trainLabelsFile ${DATA_DIR}/train-labels-idx1-ubyte.gz"
        ),
        resources=run_pb2.Resources(gpus=0, cpus=0.5, memory_mib=1024, learners=1),
        training_data=run_pb2.ObjectLocation(bucket="tf_training_data", connection=connection),
        training_results=run_pb2.ObjectLocation(bucket="tf_trained_model", connection=connection),
        source_format="ffdl",
    )
    assert parsed.inline_connections == [
        InlineConnection(
            source_path="data_stores[0].connection",
            endpoint="http://s3.default.svc.cluster.local",
            access_key_id="test",
            secret_access_key="test",
        )
    ]
    assert parsed.inline_connections[0].name == connection
    assert connection.startswith("inline-") and len(connection) == len("inline-") + 8
    assert_secret_absent(parsed.spec, "test")


def test_ffdl_credentials_never_reach_the_spec() -> None:
    manifest = FFDL_MANIFEST.replace("password: test", "password: s3cr3t-Passw0rd")

    parsed = parse(manifest)

    assert parsed.inline_connections[0].secret_access_key == "s3cr3t-Passw0rd"
    assert "s3cr3t" not in repr(parsed.inline_connections[0])
    assert_secret_absent(parsed.spec, "s3cr3t-Passw0rd")


def test_ffdl_evaluation_metrics_list_is_kept() -> None:
    manifest = FFDL_MANIFEST.split("evaluation_metrics:")[0] + "evaluation_metrics: [accuracy]\n"

    assert list(parse(manifest).spec.evaluation_metrics) == ["accuracy"]


def test_wml_example_is_accepted_unchanged() -> None:
    parsed = parse(WML_MANIFEST)

    assert parsed.spec == run_pb2.RunSpec(
        display_name="tf_mnist",
        description="Simple MNIST model implemented in TF",
        framework=run_pb2.Framework(name="tensorflow", version="1.5"),
        command="python3 convolutional_network.py --trainImagesFile ${DATA_DIR}/train-images-idx3-ubyte.gz",
        resources=run_pb2.Resources(gpus=1, gpu_type="k80", cpus=1, memory_mib=2048, learners=1),
        training_data=run_pb2.ObjectLocation(
            bucket="mnist-training-data", connection=inline_connection_name("https://s3.example.com", "AKIA...")
        ),
        training_results=run_pb2.ObjectLocation(
            bucket="mnist-training-models", connection=inline_connection_name("https://s3.example.com", "...")
        ),
        source_format="wml",
    )
    assert [(c.source_path, c.access_key_id, c.secret_access_key) for c in parsed.inline_connections] == [
        ("training_data_reference.connection", "AKIA...", "..."),
        ("training_results_reference.connection", "...", "..."),
    ]
    assert_secret_absent(parsed.spec, "...")


def test_wml_credentials_never_reach_the_spec() -> None:
    manifest = WML_MANIFEST.replace('secret_access_key: "..."', 'secret_access_key: "wJalrXUtnFEMI-K7MDENG"')

    parsed = parse(manifest)

    assert {c.secret_access_key for c in parsed.inline_connections} == {"wJalrXUtnFEMI-K7MDENG"}
    assert_secret_absent(parsed.spec, "wJalrXUtnFEMI-K7MDENG")


@pytest.mark.parametrize(
    ("configuration", "gpus", "gpu_type"),
    [("k80x2", 2, "k80"), ("k80x4", 4, "k80"), ("P100", 1, "p100"), ("p100x2", 2, "p100"), ("v100x2", 2, "v100")],
)
def test_wml_compute_configurations(configuration: str, gpus: int, gpu_type: str) -> None:
    resources = parse(WML_MANIFEST.replace("name: k80", f"name: {configuration}")).spec.resources

    assert (resources.gpus, resources.gpu_type) == (gpus, gpu_type)


def test_wml_without_compute_configuration_gets_one_gpu_of_any_type() -> None:
    manifest = WML_MANIFEST.replace("    compute_configuration:\n      name: k80\n", "")

    resources = parse(manifest).spec.resources

    assert (resources.gpus, resources.gpu_type) == (1, "")


# --- refusals ----------------------------------------------------------------------------------


def test_every_problem_is_reported_at_once_on_its_own_path() -> None:
    manifest = """
name: ""
framework: {name: pytorch, version: "9.9"}
resources: {gpus: 65, cpus: 0, memory: lots, learners: 0}
data: {bucket: "Bad_Bucket!", prefix: "../etc"}
environment: {"1BAD": x}
max_runtime: forever
gpus_typo: 1
"""
    violations = violations_of(manifest)

    assert set(violations) == {
        "name",
        "framework.version",
        "command",
        "resources.gpus",
        "resources.cpus",
        "resources.memory",
        "resources.learners",
        "data.bucket",
        "data.prefix",
        "environment.1BAD",
        "max_runtime",
        "gpus_typo",
    }
    assert "2.12, 2.13" in violations["framework.version"]


def test_ffdl_problems_are_reported_on_ffdl_paths() -> None:
    manifest = (
        FFDL_MANIFEST.replace("container: tf_training_data", "container: x")
        .replace("gpus: 0", "gpus: -1")
        .replace("memory: 1Gb", "memory: 5Tb")
        .replace("auth_url: http://s3.default.svc.cluster.local", "auth_url: ftp://s3")
    )

    violations = violations_of(manifest)

    assert set(violations) == {
        "gpus",
        "memory",
        "data_stores[0].training_data.container",
        "data_stores[0].connection.auth_url",
    }
    assert "test" not in "".join(violations.values())


def test_wml_problems_are_reported_on_wml_paths() -> None:
    manifest = WML_MANIFEST.replace("name: k80", "name: a100").replace("bucket: mnist-training-data", "bucket: ''")

    violations = violations_of(manifest)

    assert set(violations) == {
        "model_definition.execution.compute_configuration.name",
        "training_data_reference.source.bucket",
    }
    assert (
        "k80, k80x2, k80x4, p100, p100x2, v100, v100x2"
        in violations["model_definition.execution.compute_configuration.name"]
    )


@pytest.mark.parametrize(
    ("manifest", "path"), [(FFDL_MANIFEST, "framework.name"), (WML_MANIFEST, "model_definition.framework.name")]
)
def test_framework_not_offered_lists_the_accepted_ones(manifest: str, path: str) -> None:
    violations = violations_of(manifest, {"pytorch": [], "python": []})

    assert set(violations) == {path}
    assert "python, pytorch" in violations[path]


def test_framework_names_compare_case_insensitively() -> None:
    spec = parse("name: n\nframework: TensorFlow\ncommand: 'true'\n", {"TENSORFLOW": []}).spec

    assert spec.framework.name == "tensorflow"


@pytest.mark.parametrize(
    "manifest",
    [
        "a: &x [1, 2]\nb: *x\n",
        "base: &base {gpus: 1}\nresources:\n  <<: *base\n",
        'a: &a ["lol","lol"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n',
    ],
)
def test_aliases_and_anchors_are_refused(manifest: str) -> None:
    violations = violations_of(manifest)

    assert "anchors and aliases" in violations["manifest"]


def test_oversized_manifest_is_refused() -> None:
    manifest = "name: n\nframework: python\ncommand: 'true'\ndescription: " + "x" * MAX_MANIFEST_BYTES

    for text in (manifest, manifest.encode()):
        assert "bytes" in violations_of(text)["manifest"]


def test_long_strings_are_refused_but_commands_may_be_longer() -> None:
    long_command = "python train.py " + "--flag " * 2000

    assert len(parse(f"name: n\nframework: python\ncommand: {long_command}\n").spec.command) > 4096
    assert set(violations_of(f"name: {'n' * 4097}\nframework: python\ncommand: 'true'\n")) == {"name"}


def test_json_surrogate_pairs_are_joined_and_lone_ones_refused() -> None:
    manifest = {"name": "\U0001f600 digits", "framework": "python", "command": "true"}

    assert parse(json.dumps(manifest)).spec.display_name == "\U0001f600 digits"
    assert "surrogate" in violations_of(json.dumps(manifest).replace("\\ude00", ""))["manifest"]


def test_syntax_errors_name_the_line() -> None:
    violations = violations_of("name: digits\ncommand: [unclosed\nframework: python\n")

    assert "line" in violations["manifest"]


@pytest.mark.parametrize(
    "manifest",
    [
        b"\x00\x01\xff\xfe\x80binary",
        b"\x89PNG\r\n\x1a\n\x00\x00",
        "[1, 2, 3]",
        "- a\n- b\n",
        "42",
        "3.5",
        "just a string",
        "",
        "   \n# only a comment\n",
        "null",
        "a: 1\n---\nb: 2\n",
        "a: 1\na: 2\n",
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!int nope\n",
        "x: " + "1" * 5000,
        "[" * 10000 + "]" * 10000,
        "a:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 200)),
        "name: \x07bell\n",
        "name: digits\x00\n",
        "{name: [1, {2: 3}], framework: {command: 7}}",
    ],
)
def test_garbage_gives_invalid_argument(manifest: str | bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(manifest)

    assert caught.value.violations


@pytest.mark.parametrize(
    ("fragment", "path"),
    [
        ("resources: {gpus: true}", "resources.gpus"),
        ("resources: {gpus: 1.5}", "resources.gpus"),
        ("resources: {cpus: .nan}", "resources.cpus"),
        ("resources: {cpus: 257}", "resources.cpus"),
        ("resources: {memory: 0}", "resources.memory"),
        ("resources: {memory: 4097GiB}", "resources.memory"),
        ("resources: {learners: 65}", "resources.learners"),
        ("resources: {gpus: 0, gpu_type: v100}", "resources.gpu_type"),
        ("resources: {gpu: 2}", "resources.gpu"),
        ("resources: [1]", "resources"),
        ("data: {bucket: ab}", "data.bucket"),
        ("data: {bucket: UPPER}", "data.bucket"),
        ("data: {bucket: a..b}", "data.bucket"),
        ("data: {prefix: x}", "data.bucket"),
        ("data: {bucket: abc, prefix: /../abs}", "data.prefix"),
        ("results: {bucket: abc, prefix: a/../b}", "results.prefix"),
        ("data: {bucket: abc, prefix: ./}", "data.prefix"),
        ("data: {bucket: abc, prefix: 'a\\\\b'}", "data.prefix"),
        ('data: {bucket: abc, prefix: "a\\0b"}', "data.prefix"),
        ("data: {bucket: abc, connection: 'Not A Name'}", "data.connection"),
        ("results: {bucket: ok-bucket, extra: 1}", "results.extra"),
        ("environment: {BAD-NAME: x}", "environment.BAD-NAME"),
        ("environment: {OK: [1]}", "environment.OK"),
        ("environment: {OK: }", "environment.OK"),
        ("environment: [A]", "environment"),
        ("max_runtime: 0", "max_runtime"),
        ("max_runtime: 31d", "max_runtime"),
        ("evaluation_metrics: accuracy", "evaluation_metrics"),
        ("evaluation_metrics: [accuracy, 3]", "evaluation_metrics[1]"),
        ("description: [no]", "description"),
        ("framework_version: 1", "framework_version"),
    ],
)
def test_dlaas_field_refusals(fragment: str, path: str) -> None:
    manifest = f"name: n\nframework: pytorch\ncommand: 'true'\n{fragment}\n"

    assert set(violations_of(manifest)) == {path}


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("/datasets//mnist/./train", "datasets/mnist/train"),
        ("mnist/", "mnist/"),
        ("cafe\u0301/v1", "cafe\u0301/v1"),  # Unicode as written: S3 keys are exact strings
        ("a..b/c", "a..b/c"),  # dots inside a name are a name
    ],
)
def test_prefixes_are_stored_in_their_one_spelling(written: str, stored: str) -> None:
    manifest = f"name: n\nframework: pytorch\ncommand: 'true'\ndata: {{bucket: abc, prefix: {json.dumps(written)}}}\n"

    assert parse(manifest).spec.training_data.prefix == stored


def test_framework_refusals() -> None:
    assert set(violations_of("name: n\ncommand: 'true'\n")) == {"framework"}
    assert set(violations_of("name: n\nframework: jax\ncommand: 'true'\n")) == {"framework"}
    assert set(violations_of("name: n\nframework: 'pytorch:1.0'\ncommand: 'true'\n")) == {"framework"}
    assert set(violations_of("name: n\nframework: {name: pytorch, extra: 1}\ncommand: 'true'\n")) == {"framework.extra"}
    assert set(violations_of("name: n\nframework: {version: '2.13'}\ncommand: 'true'\n")) == {"framework.name"}
    assert set(violations_of("name: n\nframework: {name: python, version: 'a b'}\ncommand: 'true'\n")) == {
        "framework.version"
    }


def test_ffdl_connection_needs_all_its_fields() -> None:
    manifest = FFDL_MANIFEST.replace("      password: test\n", "")

    assert set(violations_of(manifest)) == {"data_stores[0].connection.password"}


def test_ffdl_unknown_keys_are_ignored() -> None:
    manifest = FFDL_MANIFEST + "some_old_field: {x: 1}\n"

    assert parse(manifest).spec.display_name == "tf_convolutional_network_tutorial"


# --- property: nothing but InvalidArgument escapes ---------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_KEYS = st.one_of(
    st.sampled_from(
        [
            "name",
            "framework",
            "command",
            "resources",
            "data",
            "results",
            "environment",
            "max_runtime",
            "evaluation_metrics",
            "gpus",
            "memory",
            "data_stores",
            "model_definition",
            "execution",
            "compute_configuration",
            "connection",
            "training_data",
            "training_results",
            "training_data_reference",
            "source",
            "bucket",
            "container",
            "prefix",
            "version",
        ]
    ),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)


def _parses_or_refuses(text: str | bytes) -> None:
    try:
        parsed = parse(text)
    except InvalidArgument as exc:
        assert exc.violations
    else:
        assert parsed.spec.display_name and parsed.spec.command


_FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_text_never_raises_anything_else(text: str | bytes) -> None:
    _parses_or_refuses(text)


@_FAST
@given(st.dictionaries(_KEYS, _VALUES, max_size=8))
def test_arbitrary_documents_never_raise_anything_else(document: dict[str, Any]) -> None:
    _parses_or_refuses(yaml.safe_dump(document))


@_FAST
@given(
    st.sampled_from([DLAAS_MANIFEST, FFDL_MANIFEST, WML_MANIFEST]),
    st.lists(st.tuples(st.lists(st.integers(0, 20), min_size=1, max_size=4), _VALUES), min_size=1, max_size=3),
)
def test_mutated_examples_never_raise_anything_else(manifest: str, mutations: list[tuple[list[int], Any]]) -> None:
    document = yaml.safe_load(manifest)
    for route, value in mutations:
        _replace_somewhere(document, route, value)
    _parses_or_refuses(yaml.safe_dump(document))
    _parses_or_refuses(json.dumps(document))


def _replace_somewhere(document: Any, route: list[int], value: Any) -> None:
    """Walks down the document by index along `route` and replaces what it lands on."""
    node = document
    for step in route:
        children = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not children:
            return
        key = children[step % len(children)]
        child = node[key]
        if not isinstance(child, (dict, list)) or step == route[-1]:
            node[key] = value
            return
        node = child


# --- the documentation's examples --------------------------------------------------------------

_DOCS = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


def _documented(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _DOCS.read_text(), flags=re.DOTALL)


def test_documented_manifests_parse() -> None:
    formats = [parse(example).spec.source_format for example in _documented("yaml")]

    assert formats == ["dlaas", "dlaas", "ffdl", "wml"]


def test_documented_normalized_forms_match() -> None:
    manifests = _documented("yaml")
    specs = [json_format.ParseDict(json.loads(text), run_pb2.RunSpec()) for text in _documented("json")]

    assert specs == [parse(manifests[0]).spec, parse(manifests[2]).spec, parse(manifests[3]).spec]
    assert manifests[2].strip() == FFDL_MANIFEST.strip() and manifests[3].strip() == WML_MANIFEST.strip()


def _loaded(loader: type[Any], text: str) -> tuple[str, object]:
    try:
        return "value", _load(loader, text)
    except Exception as exc:
        return "error", type(exc).__name__


def _typed(value: object) -> object:
    """`value` with every scalar's type beside it (1, 1.0 and True are equal in Python)."""
    if isinstance(value, dict):
        return [(_typed(k), _typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value), getattr(value, "text", None))  # repr: nan is nan


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.dictionaries(_KEYS, _VALUES, max_size=8).map(yaml.safe_dump),
        st.dictionaries(_KEYS, _VALUES, max_size=8).map(lambda d: yaml.safe_dump(d, default_flow_style=True)),
        st.dictionaries(_KEYS, _VALUES, max_size=8).map(json.dumps),
        st.text(max_size=200),
        st.sampled_from(
            [
                "a: 1\na: 2\n",
                "1: x\n0x1: y\n",
                "<<: {a: 1}\nb: 2\n",
                "? [a]\n: b\n",
                "--- a\n--- b\n",
                "a: &x 1\nb: *x\n",
                "a: !!str 1\n",
                "v: 1.10\nw: 0o17\nx: 1_000\ny: 1:30\nz: .inf\n",
                "t: yes\nu: ~\nd: 2020-01-01\n",
                'j: "\\ud83d\\ude00"\n',
                'k: "\\ud800"\n',
                "".join("[" * 40) + "".join("]" * 40),
                "",
                "# only a comment\n",
            ]
        ),
    )
)
def test_the_fast_loader_reads_what_pyyamls_reads_or_leaves_it_to_it(text: str) -> None:
    """libyaml's events built into values in one pass: where it answers, it answers exactly what
    PyYAML's own loader (the judge) answers, types and a float's spelling included."""
    fast, slow = _loaded(_FastLoader, text), _loaded(_ManifestLoader, text)
    if fast[0] == "value":
        # libyaml's scanner reads a few texts PyYAML's refuses (a tab after a value, "0\t"): valid
        # YAML either way, and documented at _ManifestLoader. Beyond the scanner, no difference.
        assert slow[0] == "value" or slow == ("error", "ScannerError"), (text, fast, slow)
        if slow[0] == "value":
            assert _typed(fast[1]) == _typed(slow[1]), text


@pytest.mark.parametrize("manifest", [DLAAS_MANIFEST, FFDL_MANIFEST, WML_MANIFEST])
def test_the_usual_manifests_are_read_by_the_fast_loader_itself(manifest: str) -> None:
    """Not left to PyYAML's loader: the one-pass path is the one taken."""
    assert _typed(_load(_FastLoader, manifest)) == _typed(_load(_ManifestLoader, manifest))
