"""The manifest parser: three manifest formats in, one normalized RunSpec out.

Formats (docs/manifest.md): our own ("dlaas"), FfDL's and IBM Watson Machine Learning's ("wml").
Every problem found is reported at once, each on the path the user wrote, so that one
round trip is enough to fix a manifest. Credentials written inline in an FfDL or WML
manifest are handed back beside the spec, never inside it: the spec is stored and shown.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast
from urllib.parse import urlsplit

import yaml
from yaml._yaml import CParser
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.error import Mark
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from dlaas import keys as object_keys
from dlaas.types.v1 import run_pb2
from services.common.errors import FieldViolation, InvalidArgument
from services.common.names import is_id

MAX_MANIFEST_BYTES = 64 * 1024
MAX_STRING_CHARS = 4096
MAX_COMMAND_CHARS = 16384
MAX_PREFIX_CHARS = 1024  # the longest S3 key
MAX_NESTING = 32
MAX_GPUS = 64
MAX_LEARNERS = 64
MAX_PRIORITY = 1000
MAX_CPUS = 256.0
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB
MAX_RUNTIME_SECONDS = 30 * 24 * 3600

DEFAULT_GPUS = 1
DEFAULT_CPUS = 1.0
DEFAULT_MEMORY_MIB = 2048
DEFAULT_LEARNERS = 1
DEFAULT_RESULTS_BUCKET = "dlaas-results"

# WML's named compute configurations: GPUs per learner and GPU product.
WML_COMPUTE_CONFIGURATIONS: Mapping[str, tuple[int, str]] = {
    "k80": (1, "k80"),
    "k80x2": (2, "k80"),
    "k80x4": (4, "k80"),
    "p100": (1, "p100"),
    "p100x2": (2, "p100"),
    "v100": (1, "v100"),
    "v100x2": (2, "v100"),
}

_DLAAS_KEYS = frozenset(
    {
        "name",
        "description",
        "framework",
        "command",
        "resources",
        "data",
        "results",
        "environment",
        "max_runtime",
        "evaluation_metrics",
        "priority",
    }
)
_FRAMEWORK_KEYS = frozenset({"name", "version"})
_RESOURCE_KEYS = frozenset({"gpus", "gpu_type", "cpus", "memory", "learners"})
_LOCATION_KEYS = frozenset({"bucket", "prefix", "connection"})

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
_GPU_TYPE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bounded digit counts keep Fraction/int away from Python's long-integer conversion limit.
_MEMORY = re.compile(r"(?P<amount>\d{1,12}(?:\.\d{1,6})?)\s*(?P<unit>[kmgt]i?b?|b)?", re.IGNORECASE)
_DURATION = re.compile(r"(?:(?P<d>\d{1,6})d)?(?:(?P<h>\d{1,7})h)?(?:(?P<m>\d{1,9})m)?(?:(?P<s>\d{1,10})s)?")
_LINE_BREAKS = re.compile(r"\s*[\r\n]\s*")
_UNIT_BYTES = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class InlineConnection:
    """Object-store credentials written inline in an FfDL or WML manifest.

    They go to the storage service, never into the RunSpec, which is stored and shown to users.
    """

    source_path: str
    endpoint: str
    access_key_id: str
    secret_access_key: str = field(repr=False)

    @property
    def name(self) -> str:
        """The connection name the spec's ObjectLocation carries for these credentials."""
        return inline_connection_name(self.endpoint, self.access_key_id)


@dataclass(frozen=True)
class ParsedManifest:
    spec: run_pb2.RunSpec
    inline_connections: list[InlineConnection]


def inline_connection_name(endpoint: str, access_key_id: str) -> str:
    # Deterministic, so that resubmitting the same manifest reuses one connection.
    digest = hashlib.sha256((endpoint + access_key_id).encode()).hexdigest()
    return f"inline-{digest[:8]}"


def parse_manifest(text: str | bytes, *, frameworks: Mapping[str, Collection[str]]) -> ParsedManifest:
    """Parses a dlaas, FfDL or WML manifest (YAML or JSON) into a RunSpec.

    `frameworks` maps each accepted framework name to its accepted versions; an empty
    collection accepts any version. Raises InvalidArgument listing every problem found.
    """
    document = _load_document(text)
    check = _Checker()
    catalogue = _Catalogue(frameworks)
    source_format = detect_format(document)
    spec, inline = _PARSERS[source_format](document, check, catalogue)
    if check.violations:
        raise InvalidArgument(_summary(check.violations), check.violations)
    spec.source_format = source_format
    return ParsedManifest(spec=spec, inline_connections=inline)


def detect_format(document: Mapping[object, object]) -> str:
    """The manifest format, from the keys only a given format has."""
    if "model_definition" in document:
        return "wml"
    framework = document.get("framework")
    if "data_stores" in document or (isinstance(framework, dict) and "command" in framework):
        return "ffdl"
    return "dlaas"


def _summary(violations: list[FieldViolation]) -> str:
    shown = "; ".join(f"{v.field or 'manifest'}: {v.description}" for v in violations[:5])
    more = f" (and {len(violations) - 5} more)" if len(violations) > 5 else ""
    return f"invalid manifest: {shown}{more}"


# ---------------------------------------------------------------------------------------------
# Loading: YAML (a superset of JSON) with the dangerous and surprising parts switched off.


class _FloatText(float):
    """A float that remembers how it was written, so `version: 1.10` stays "1.10"."""

    text: str


def _check_event(event: Event, depth: int) -> None:
    """Refuses what a manifest may not use: anchors and aliases (billion laughs), explicit tags,
    nesting deeper than MAX_NESTING (`depth` is the event's)."""
    mark: Mark | None = event.start_mark  # type: ignore[assignment]  # the C parser's marks read the same
    if isinstance(event, AliasEvent) or (isinstance(event, NodeEvent) and event.anchor is not None):
        raise ComposerError(None, None, "YAML anchors and aliases are not accepted", mark)
    if isinstance(event, (ScalarEvent, CollectionStartEvent)) and event.tag is not None:
        raise ComposerError(None, None, "explicit YAML tags are not accepted", mark)
    if depth >= MAX_NESTING:
        raise ComposerError(None, None, f"nesting deeper than {MAX_NESTING} levels", mark)


class _ManifestChecks(Composer, SafeConstructor, Resolver):
    """SafeLoader's composing and constructing without aliases (billion laughs), explicit tags, deep
    nesting or duplicate keys; the loaders below put a scanner and parser under it."""

    _depth = 0

    def __init__(self) -> None:
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        _check_event(cast(Event, self.peek_event()), self._depth)  # type: ignore[attr-defined]  # the parser's
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        # PyYAML keeps the last of two equal keys silently; that hides typos and conflicts.
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                identity = (key_node.tag, key_node.value)
                if identity in seen:
                    raise ConstructorError(None, None, f"duplicate key {key_node.value[:64]!r}", key_node.start_mark)
                seen.add(identity)
        return super().construct_mapping(node, deep)

    def construct_scalar(self, node: ScalarNode | MappingNode) -> str:
        value = super().construct_scalar(node)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # PyYAML leaves JSON's "\ud83d\ude00" as two surrogates, which no protobuf string
            # accepts: join the pairs as JSON does, and refuse the lone ones.
            try:
                return value.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                raise ConstructorError(
                    None, None, "a lone UTF-16 surrogate escape is not text", node.start_mark
                ) from None
        return value

    def construct_yaml_float(self, node: ScalarNode) -> float:
        number = _FloatText(super().construct_yaml_float(node))
        number.text = node.value
        return number


# Dates stay strings (`version: 2020-01-01` is a version, and bad dates crash PyYAML), and
# "=" is nobody's value tag here.
_ManifestChecks.yaml_implicit_resolvers = {
    first: [
        (tag, pattern)
        for tag, pattern in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
    ]
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
}
_ManifestChecks.add_constructor(  # type: ignore[type-var]  # the stubs know only PyYAML's own loaders
    "tag:yaml.org,2002:float", _ManifestChecks.construct_yaml_float
)


class _Defer(yaml.YAMLError):
    """The fast path leaves this manifest to `_ManifestLoader`, which judges anything unusual."""


_MERGE = "tag:yaml.org,2002:merge"
_STR = "tag:yaml.org,2002:str"


class _FastLoader(CParser, _ManifestChecks):
    """libyaml (C) scans and parses, about seven times faster than PyYAML's Python scanner, and
    values are built from its events in one pass, each event through `_check_event` (libyaml's own
    composer, in C, would take aliases as they come). Scalars are resolved and constructed by
    PyYAML's rules, as `_ManifestLoader` does. Anything unusual (several documents, merge keys,
    keys that are not scalars, duplicate keys, any error) is left to `_ManifestLoader` by raising a
    YAMLError, so that the answer, value or refusal, is always the one PyYAML's loader gives."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        _ManifestChecks.__init__(self)

    def get_single_data(self) -> object:
        self.get_event()  # StreamStartEvent
        if self.check_event(StreamEndEvent):
            return None
        self.get_event()  # DocumentStartEvent
        value = self._value(0)
        self.get_event()  # DocumentEndEvent
        if not self.check_event(StreamEndEvent):
            raise _Defer("several documents")
        return value

    def _value(self, depth: int) -> object:
        event: Event = self.get_event()  # type: ignore[assignment]  # None only past the stream's end
        _check_event(event, depth)
        if isinstance(event, ScalarEvent):
            return self._scalar(event)[1]
        if isinstance(event, SequenceStartEvent):
            items = []
            while not self.check_event(SequenceEndEvent):
                items.append(self._value(depth + 1))
            self.get_event()
            return items
        if not isinstance(event, MappingStartEvent):
            raise _Defer(f"unexpected {type(event).__name__}")
        mapping: dict[object, object] = {}
        while not self.check_event(MappingEndEvent):
            key_event = self.get_event()
            if not isinstance(key_event, ScalarEvent):
                raise _Defer("a key that is not a scalar")
            _check_event(key_event, depth + 1)
            tag, key = self._scalar(key_event)
            if tag == _MERGE or key in mapping:  # a key seen before, perhaps spelled otherwise ("1", "0x1")
                raise _Defer("a merge key or a duplicate key")
            mapping[key] = self._value(depth + 1)
        self.get_event()
        return mapping

    def _scalar(self, event: ScalarEvent) -> tuple[str, object]:
        tag: str = self.resolve(ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag == _STR and event.value.isascii():
            return tag, event.value  # what `construct_scalar` gives: ASCII holds no surrogates
        construct = self.yaml_constructors.get(tag)
        if construct is None:
            raise _Defer(f"no constructor for {tag}")
        node = ScalarNode(tag, event.value, cast(Mark, event.start_mark), cast(Mark, event.end_mark), event.style)
        return tag, construct(self, node)


class _ManifestLoader(Reader, Scanner, Parser, _ManifestChecks):
    """PyYAML's own scanner and parser: the judge wherever libyaml refuses (it is stricter in places:
    JSON's surrogate-pair escapes), so that every manifest PyYAML reads is accepted (libyaml also
    reads a few PyYAML refuses, such as a tab after a value: valid YAML either way)."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _ManifestChecks.__init__(self)


def _load(loader_class: type[_FastLoader | _ManifestLoader], text: str) -> object:
    loader = loader_class(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _load_document(text: str | bytes) -> Mapping[object, object]:
    decoded = _decode(text)
    try:
        try:
            document = _load(_FastLoader, decoded)
        except Exception:  # noqa: BLE001 - whatever it is, PyYAML's loader judges (and says) it
            document = _load(_ManifestLoader, decoded)  # the same refusal, or what PyYAML reads
    except yaml.MarkedYAMLError as exc:
        raise _whole_manifest(_describe_marked(exc)) from None
    except yaml.reader.ReaderError as exc:
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise _whole_manifest(
            f"contains the unacceptable character #x{ord(character):04x} at position {exc.position}."
        ) from None
    except (yaml.YAMLError, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        # PyYAML constructors let some plain Python errors through (an int of 5000 digits).
        raise _whole_manifest(f"could not be read: {str(exc)[:200]}") from None
    if document is None:
        raise _whole_manifest("is empty.")
    if not isinstance(document, dict):
        raise _whole_manifest(f"must be a mapping of fields at the top level, not {_kind(document)}.")
    return document


def _decode(text: str | bytes) -> str:
    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise _too_large(len(text))
        try:
            return text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _whole_manifest(f"is not UTF-8 text (bad byte at offset {exc.start}).") from None
    if not isinstance(text, str):
        raise _whole_manifest(f"must be text, not {type(text).__name__}.")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        raise _too_large(size)
    return text


def _too_large(size: int) -> InvalidArgument:
    return _whole_manifest(f"is {size} bytes long; at most {MAX_MANIFEST_BYTES} bytes are accepted.")


def _whole_manifest(description: str) -> InvalidArgument:
    return InvalidArgument(f"invalid manifest: {description}", [FieldViolation("manifest", description)])


def _describe_marked(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
    problem = exc.problem or "not valid YAML"
    context = f" ({exc.context})" if exc.context else ""
    return f"is not valid YAML at {where}: {problem}{context}."


# ---------------------------------------------------------------------------------------------
# Checking values: every check records its violation and returns a usable default, so that
# parsing goes on and reports everything at once.


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _show(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:61] + "...")


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


class _Checker:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def mapping(self, value: object, path: str) -> Mapping[object, object] | None:
        """A mapping, or None when absent or null."""
        if value is None:
            return None
        if isinstance(value, dict):
            return value
        self.add(path, f"must be a mapping of fields, not {_kind(value)}.")
        return None

    def known_keys(self, mapping: Mapping[object, object], allowed: frozenset[str], parent: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.add(_join(parent, str(key)), f"is not a known field; known fields: {', '.join(sorted(allowed))}.")

    def string(self, value: object, path: str, *, required: bool = False, limit: int = MAX_STRING_CHARS) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.add(path, "is required.")
            return ""
        if not isinstance(value, str):
            self.add(path, f"must be a string, not {_kind(value)}.")
            return ""
        if len(value) > limit:
            self.add(path, f"must be at most {limit} characters long, not {len(value)}.")
            return ""
        return value

    def integer(self, value: object, path: str, *, low: int, high: int, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"must be a whole number, not {_kind(value)}.")
            return default
        if not low <= value <= high:
            self.add(path, f"must be between {low} and {high}, not {_show(str(value))}.")
            return default
        return value


class _Catalogue:
    """The frameworks the caller accepts, by lower-case name."""

    def __init__(self, frameworks: Mapping[str, Collection[str]]) -> None:
        self.versions = {name.lower(): frozenset(versions) for name, versions in frameworks.items()}

    def check(self, check: _Checker, name: str, version: str, name_path: str, version_path: str) -> None:
        if name not in self.versions:
            accepted = ", ".join(sorted(self.versions)) or "none"
            check.add(name_path, f"framework {_show(name)} is not offered; accepted frameworks: {accepted}.")
            return
        versions = self.versions[name]
        if version and versions and version not in versions:
            accepted = ", ".join(sorted(versions))
            check.add(version_path, f"version {_show(version)} of {name} is not offered; accepted: {accepted}.")


# ---------------------------------------------------------------------------------------------
# Fields shared by the formats.


def _framework(check: _Checker, value: object, path: str, catalogue: _Catalogue, *, strict: bool) -> run_pb2.Framework:
    """A framework mapping {name, version}, or the short string form "name" or "name:version"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        check.add(path, "is required.")
        return run_pb2.Framework()
    if isinstance(value, str):
        name, _, version = value.strip().partition(":")
        name_path = version_path = path
    else:
        mapping = check.mapping(value, path)
        if mapping is None:
            return run_pb2.Framework()
        if strict:
            check.known_keys(mapping, _FRAMEWORK_KEYS, path)
        name_path, version_path = _join(path, "name"), _join(path, "version")
        name = check.string(mapping.get("name"), name_path, required=True)
        version = _version(check, mapping.get("version"), version_path)
    name, version = name.strip().lower(), version.strip()
    if version and not _VERSION.fullmatch(version):
        check.add(version_path, f"{_show(version)} is not a version: letters, digits, '.', '_', '+' or '-'.")
        version = ""
    if name:
        catalogue.check(check, name, version, name_path, version_path)
    return run_pb2.Framework(name=name, version=version)


def _version(check: _Checker, value: object, path: str) -> str:
    # People write `version: 1.5` unquoted; keep it as written rather than refuse it.
    if isinstance(value, _FloatText):
        return value.text
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return check.string(value, path).strip()


def _gpus(check: _Checker, value: object, path: str) -> int:
    return check.integer(value, path, low=0, high=MAX_GPUS, default=DEFAULT_GPUS)


def _learners(check: _Checker, value: object, path: str) -> int:
    return check.integer(value, path, low=1, high=MAX_LEARNERS, default=DEFAULT_LEARNERS)


def _gpu_type(check: _Checker, value: object, path: str) -> str:
    gpu_type = check.string(value, path).strip().lower()
    if gpu_type and not _GPU_TYPE.fullmatch(gpu_type):
        check.add(path, f"{_show(gpu_type)} is not a GPU product name such as 'v100'.")
        return ""
    return gpu_type


def _cpus(check: _Checker, value: object, path: str) -> float:
    if value is None:
        return DEFAULT_CPUS
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        check.add(path, f"must be a number, not {_kind(value)}.")
        return DEFAULT_CPUS
    if not 0 < value <= MAX_CPUS:  # written this way round so that NaN fails too
        check.add(path, f"must be more than 0 and at most {MAX_CPUS:g}, not {value}.")
        return DEFAULT_CPUS
    return float(value)


def _memory_mib(check: _Checker, value: object, path: str) -> int:
    """Memory as a number of MiB or a size with a unit; every unit is binary (1Gb = 1 GiB)."""
    if value is None:
        return DEFAULT_MEMORY_MIB
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        check.add(path, f"must be a size such as '2GiB' or a number of MiB, not {_kind(value)}.")
        return DEFAULT_MEMORY_MIB
    mib = _size_in_mib(value)
    if mib is None:
        check.add(path, f"{_show(str(value))} is not a size such as '2GiB', '512Mi', '1Gb' or a number of MiB.")
        return DEFAULT_MEMORY_MIB
    if not 0 < mib <= MAX_MEMORY_MIB:
        check.add(path, f"must be more than 0 and at most 4 TiB, not {_show(str(value))}.")
        return DEFAULT_MEMORY_MIB
    return mib


def _size_in_mib(value: int | float | str) -> int | None:
    if isinstance(value, (int, float)):
        return math.ceil(value) if math.isfinite(value) and value >= 0 else None
    match = _MEMORY.fullmatch(value.strip())
    if match is None:
        return None
    unit = (match["unit"] or "m")[0].lower()
    size = Fraction(match["amount"]) * _UNIT_BYTES[unit] / _UNIT_BYTES["m"]
    return math.ceil(size)


def _bucket(check: _Checker, value: object, path: str) -> str:
    bucket = check.string(value, path, required=True)
    if bucket and (not _BUCKET.fullmatch(bucket) or ".." in bucket):
        check.add(
            path,
            f"{_show(bucket)} is not a bucket name: 3 to 63 lower-case letters, digits, '.', '-' or '_', "
            "starting and ending with a letter or digit.",
        )
    return bucket


def _prefix(check: _Checker, value: object, path: str) -> str:
    """A key prefix in its one spelling (`dlaas.keys`): "/data//mnist/./" is "data/mnist/"."""
    prefix = object_keys.normalize(check.string(value, path, limit=MAX_PREFIX_CHARS))
    why = object_keys.problem(prefix)
    if why:
        check.add(path, why)
    return prefix


def _connection_name(check: _Checker, value: object, path: str) -> str:
    name = check.string(value, path)
    if name and not is_id(name):
        check.add(path, f"{_show(name)} is not a connection name: up to 63 lower-case letters, digits or '-'.")
    return name


def _location(
    check: _Checker, source: Mapping[object, object], path: str, *, bucket_key: str, connection: str
) -> run_pb2.ObjectLocation:
    return run_pb2.ObjectLocation(
        bucket=_bucket(check, source.get(bucket_key), _join(path, bucket_key)),
        prefix=_prefix(check, source.get("prefix"), _join(path, "prefix")),
        connection=connection,
    )


def _default_results() -> run_pb2.ObjectLocation:
    return run_pb2.ObjectLocation(bucket=DEFAULT_RESULTS_BUCKET)


def _inline_connection(
    check: _Checker, value: object, path: str, keys: tuple[str, str, str]
) -> InlineConnection | None:
    """Credentials under `keys` (endpoint, access key, secret); values never echoed back."""
    mapping = check.mapping(value, path)
    if mapping is None:
        return None
    endpoint_key, access_key, secret_key = keys
    endpoint = check.string(mapping.get(endpoint_key), _join(path, endpoint_key), required=True).strip()
    access = check.string(mapping.get(access_key), _join(path, access_key), required=True)
    secret = check.string(mapping.get(secret_key), _join(path, secret_key), required=True)
    if endpoint and not _is_http_url(endpoint):
        check.add(_join(path, endpoint_key), "must be an http:// or https:// URL of the object store.")
        return None
    if not (endpoint and access and secret):
        return None
    return InlineConnection(source_path=path, endpoint=endpoint, access_key_id=access, secret_access_key=secret)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False


def _metric_names(check: _Checker, value: list[object], path: str) -> list[str]:
    return [check.string(item, f"{path}[{index}]", required=True) for index, item in enumerate(value)]


def _command(check: _Checker, value: object, path: str) -> str:
    return check.string(value, path, required=True, limit=MAX_COMMAND_CHARS).strip()


def _one_line_command(check: _Checker, value: object, path: str) -> str:
    # FfDL and WML ran the command as one shell line, and their manifests rely on it: a folded
    # `command: >` with indented continuation lines keeps its line breaks in YAML.
    return _LINE_BREAKS.sub(" ", _command(check, value, path))


def _display_name(check: _Checker, value: object, path: str) -> str:
    return check.string(value, path, required=True).strip()


# ---------------------------------------------------------------------------------------------
# The formats.

_Parsed = tuple[run_pb2.RunSpec, list[InlineConnection]]


def _parse_dlaas(document: Mapping[object, object], check: _Checker, catalogue: _Catalogue) -> _Parsed:
    check.known_keys(document, _DLAAS_KEYS, "")
    spec = run_pb2.RunSpec(
        display_name=_display_name(check, document.get("name"), "name"),
        description=check.string(document.get("description"), "description"),
        framework=_framework(check, document.get("framework"), "framework", catalogue, strict=True),
        command=_command(check, document.get("command"), "command"),
        resources=_dlaas_resources(check, document.get("resources")),
        training_results=_dlaas_location(check, document.get("results"), "results") or _default_results(),
        environment=_environment(check, document.get("environment"), "environment"),
        evaluation_metrics=_dlaas_metrics(check, document.get("evaluation_metrics"), "evaluation_metrics"),
        priority=check.integer(document.get("priority"), "priority", low=-MAX_PRIORITY, high=MAX_PRIORITY, default=0),
    )
    training_data = _dlaas_location(check, document.get("data"), "data")
    if training_data is not None:
        spec.training_data.CopyFrom(training_data)
    max_runtime = _max_runtime(check, document.get("max_runtime"), "max_runtime")
    if max_runtime:
        spec.max_runtime.FromSeconds(max_runtime)
    return spec, []


def _dlaas_resources(check: _Checker, value: object) -> run_pb2.Resources:
    resources = check.mapping(value, "resources") or {}
    check.known_keys(resources, _RESOURCE_KEYS, "resources")
    return _resources(check, resources, "resources")


def _resources(check: _Checker, source: Mapping[object, object], parent: str) -> run_pb2.Resources:
    gpus = _gpus(check, source.get("gpus"), _join(parent, "gpus"))
    gpu_type = _gpu_type(check, source.get("gpu_type"), _join(parent, "gpu_type"))
    if gpus == 0 and gpu_type:
        check.add(_join(parent, "gpu_type"), "needs at least one GPU; gpus is 0.")
    return run_pb2.Resources(
        gpus=gpus,
        gpu_type=gpu_type,
        cpus=_cpus(check, source.get("cpus"), _join(parent, "cpus")),
        memory_mib=_memory_mib(check, source.get("memory"), _join(parent, "memory")),
        learners=_learners(check, source.get("learners"), _join(parent, "learners")),
    )


def _dlaas_location(check: _Checker, value: object, path: str) -> run_pb2.ObjectLocation | None:
    mapping = check.mapping(value, path)
    if mapping is None:
        return None
    check.known_keys(mapping, _LOCATION_KEYS, path)
    connection = _connection_name(check, mapping.get("connection"), _join(path, "connection"))
    return _location(check, mapping, path, bucket_key="bucket", connection=connection)


def _environment(check: _Checker, value: object, path: str) -> dict[str, str]:
    environment: dict[str, str] = {}
    for key, item in (check.mapping(value, path) or {}).items():
        item_path = _join(path, str(key))
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            check.add(item_path, "is not a variable name: letters, digits and '_', not starting with a digit.")
            continue
        environment[key] = _environment_value(check, item, item_path)
    return environment


def _environment_value(check: _Checker, value: object, path: str) -> str:
    # Unquoted numbers and booleans are common in `environment`; keep them as written where we can.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _FloatText):
        return value.text
    if isinstance(value, int):
        return str(value)
    if value is None:
        check.add(path, "needs a value; write '' for an empty one.")
        return ""
    return check.string(value, path)


def _dlaas_metrics(check: _Checker, value: object, path: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        check.add(path, f"must be a list of metric names, not {_kind(value)}.")
        return []
    return _metric_names(check, value, path)


def _max_runtime(check: _Checker, value: object, path: str) -> int:
    """Seconds, from a number of seconds or a duration such as '1h30m'; 0 when absent."""
    if value is None:
        return 0
    seconds = _duration_seconds(value)
    if seconds is None:
        check.add(path, "must be a number of seconds or a duration such as '90s', '30m', '2h' or '1h30m'.")
        return 0
    if not 0 < seconds <= MAX_RUNTIME_SECONDS:
        check.add(path, f"must be more than 0 seconds and at most 30 days, not {seconds} seconds.")
        return 0
    return seconds


def _duration_seconds(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit() and len(text) <= 10:
        return int(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        return None
    weights = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(match[unit]) * weight for unit, weight in weights.items() if match[unit])


def _parse_ffdl(document: Mapping[object, object], check: _Checker, catalogue: _Catalogue) -> _Parsed:
    framework_value = document.get("framework")
    framework_fields = framework_value if isinstance(framework_value, dict) else {}
    spec = run_pb2.RunSpec(
        display_name=_display_name(check, document.get("name"), "name"),
        description=check.string(document.get("description"), "description"),
        framework=_framework(check, framework_value, "framework", catalogue, strict=False),
        command=_one_line_command(check, framework_fields.get("command"), "framework.command"),
        resources=_resources(check, document, ""),
        evaluation_metrics=_ffdl_metrics(check, document.get("evaluation_metrics"), "evaluation_metrics"),
    )
    inline = _ffdl_data_store(check, document.get("data_stores"), spec)
    return spec, inline


def _ffdl_data_store(check: _Checker, value: object, spec: run_pb2.RunSpec) -> list[InlineConnection]:
    """Fills the spec's locations from the first data store; FfDL runs use one."""
    spec.training_results.CopyFrom(_default_results())
    if value is None:
        return []
    if not isinstance(value, list):
        check.add("data_stores", f"must be a list of data stores, not {_kind(value)}.")
        return []
    if not value:
        return []
    path = "data_stores[0]"
    store = check.mapping(value[0], path)
    if store is None:
        if value[0] is None:
            check.add(path, "must be a data store, not null.")
        return []
    credentials = _inline_connection(
        check, store.get("connection"), _join(path, "connection"), ("auth_url", "user_name", "password")
    )
    connection = credentials.name if credentials else ""
    training_data = check.mapping(store.get("training_data"), _join(path, "training_data"))
    if training_data is not None:
        spec.training_data.CopyFrom(
            _location(check, training_data, _join(path, "training_data"), bucket_key="container", connection=connection)
        )
    results = check.mapping(store.get("training_results"), _join(path, "training_results"))
    if results is not None:
        spec.training_results.CopyFrom(
            _location(check, results, _join(path, "training_results"), bucket_key="container", connection=connection)
        )
    return [credentials] if credentials else []


def _ffdl_metrics(check: _Checker, value: object, path: str) -> list[str]:
    # FfDL's own form is a mapping (`type: tensorboard`) that names no metric.
    return _metric_names(check, value, path) if isinstance(value, list) else []


def _parse_wml(document: Mapping[object, object], check: _Checker, catalogue: _Catalogue) -> _Parsed:
    model = check.mapping(document.get("model_definition"), "model_definition")
    if model is None:
        if document.get("model_definition") is None:
            check.add("model_definition", "is required.")
        model = {}
    path = "model_definition"
    execution_path = _join(path, "execution")
    execution = check.mapping(model.get("execution"), execution_path) or {}
    spec = run_pb2.RunSpec(
        display_name=_display_name(check, model.get("name"), _join(path, "name")),
        description=check.string(model.get("description"), _join(path, "description")),
        framework=_framework(check, model.get("framework"), _join(path, "framework"), catalogue, strict=False),
        command=_one_line_command(check, execution.get("command"), _join(execution_path, "command")),
        resources=_wml_resources(check, execution.get("compute_configuration"), execution_path),
        training_results=_default_results(),
    )
    inline: list[InlineConnection] = []
    data = _wml_reference(check, document.get("training_data_reference"), "training_data_reference", "source")
    if data is not None:
        spec.training_data.CopyFrom(data[0])
        inline += data[1]
    results = _wml_reference(check, document.get("training_results_reference"), "training_results_reference", "target")
    if results is not None:
        spec.training_results.CopyFrom(results[0])
        inline += results[1]
    return spec, inline


def _wml_resources(check: _Checker, value: object, parent: str) -> run_pb2.Resources:
    path = _join(parent, "compute_configuration")
    resources = run_pb2.Resources(
        gpus=DEFAULT_GPUS, cpus=DEFAULT_CPUS, memory_mib=DEFAULT_MEMORY_MIB, learners=DEFAULT_LEARNERS
    )
    configuration = check.mapping(value, path)
    if configuration is None:
        return resources
    name_path = _join(path, "name")
    name = check.string(configuration.get("name"), name_path, required=True).strip().lower()
    if name and name not in WML_COMPUTE_CONFIGURATIONS:
        known = ", ".join(WML_COMPUTE_CONFIGURATIONS)
        check.add(name_path, f"{_show(name)} is not a compute configuration; known: {known}.")
    elif name:
        resources.gpus, resources.gpu_type = WML_COMPUTE_CONFIGURATIONS[name]
    resources.learners = _learners(check, configuration.get("nodes"), _join(path, "nodes"))
    return resources


def _wml_reference(
    check: _Checker, value: object, path: str, location_key: str
) -> tuple[run_pb2.ObjectLocation, list[InlineConnection]] | None:
    reference = check.mapping(value, path)
    if reference is None:
        return None
    credentials = _inline_connection(
        check,
        reference.get("connection"),
        _join(path, "connection"),
        ("endpoint_url", "access_key_id", "secret_access_key"),
    )
    location_path = _join(path, location_key)
    location_fields = check.mapping(reference.get(location_key), location_path) or {}
    location = _location(
        check,
        location_fields,
        location_path,
        bucket_key="bucket",
        connection=credentials.name if credentials else "",
    )
    return location, [credentials] if credentials else []


_PARSERS: Mapping[str, Callable[[Mapping[object, object], _Checker, _Catalogue], _Parsed]] = {
    "dlaas": _parse_dlaas,
    "ffdl": _parse_ffdl,
    "wml": _parse_wml,
}
