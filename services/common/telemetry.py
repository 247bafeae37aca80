"""Tracing and metrics shared by every service.

Traces: OpenTelemetry, context carried across every gRPC hop by the library's interceptors, and
across asynchronous hand-offs (queue → dispatch, outbox → metering) by a stored W3C carrier.
Metrics: Prometheus, one set of collectors for all services (labelled by service).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from prometheus_client import Counter, Histogram

RPC_HANDLED = Counter(
    "dlaas_grpc_server_handled_total",
    "RPCs completed by a dlaas service.",
    ["service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "dlaas_grpc_server_handling_seconds",
    "Time to handle an RPC (to the last message for streams).",
    ["service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)


def setup_tracing(service: str, exporter: str) -> None:
    """Installs a tracer provider for `exporter` unless one is there already (tests install an
    in-memory one). With no exporter, none: spans that nobody would see are not made at all (the
    services add no tracing interceptors, see `tracing_on`; bench-submit: 10-15 % less CPU a call)."""
    if tracing_on() or exporter == "none":
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def tracing_on() -> bool:
    """Whether spans are recorded here: a provider of the SDK is installed. Call it after `setup_tracing`."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def current_carrier() -> dict[str, str]:
    """The current trace context as W3C headers, to be stored with work handed off for later."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def span_from_carrier(tracer_name: str, span_name: str, carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Continues a stored trace: the span becomes a child of the work that stored `carrier`."""
    context = propagate.extract(dict(carrier or {}))
    with trace.get_tracer(tracer_name).start_as_current_span(span_name, context=context):
        yield
