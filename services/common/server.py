"""The one server bootstrap: interceptors, health, reflection, metrics endpoint, graceful shutdown.

Each service has `async def build_server(settings) -> Service`; tests start that on port 0,
`python -m services.<name>` calls `serve(build_server, Settings())`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from prometheus_client import start_http_server

from services.common.errors import DomainError, InvalidArgument, ResourceExhausted
from services.common.logs import bind_run, setup_logging
from services.common.settings import ServiceSettings
from services.common.telemetry import RPC_HANDLED, RPC_SECONDS, setup_tracing, tracing_on

log = logging.getLogger(__name__)

ERROR_DOMAIN = "dlaas.io"
MAX_MESSAGE_BYTES = 80 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


# What an error may carry: its status travels in the response's trailing metadata, which gRPC
# refuses beyond 8 KiB (the caller would see RESOURCE_EXHAUSTED instead of the error). Budgets
# in UTF-8 bytes: the message is percent-encoded there (3 characters a non-ASCII byte), the
# details base64 (4/3).
MAX_MESSAGE_BYTES = 600
MAX_FIELD_BYTES = 300
MAX_DESCRIPTION_BYTES = 500
MAX_VIOLATIONS_BYTES = 2500


def _text(value: str, limit: int) -> str:
    """At most `limit` bytes of valid UTF-8: lone surrogates (from JSON's "\\ud800") escaped."""
    data = value.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def _violations(error: InvalidArgument) -> list[error_details_pb2.BadRequest.FieldViolation]:
    shown = error_details_pb2.BadRequest()
    for index, v in enumerate(error.violations):
        violation = shown.field_violations.add(
            field=_text(v.field, MAX_FIELD_BYTES), description=_text(v.description, MAX_DESCRIPTION_BYTES)
        )
        if shown.ByteSize() > MAX_VIOLATIONS_BYTES:
            violation.description = f"and {len(error.violations) - index} more problem(s) not shown; fix these first"
            break
    return list(shown.field_violations)


def to_status(error: DomainError) -> grpc.Status:
    """A domain error as the status a call ends with (see `status_of`)."""
    return rpc_status.to_status(status_of(error))  # type: ignore[no-any-return]


def status_of(error: DomainError) -> status_pb2.Status:
    """A domain error as google.rpc.Status with ErrorInfo and, for bad input, BadRequest; bounded
    in size and valid UTF-8 whatever the input it describes."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason,
            domain=ERROR_DOMAIN,
            metadata={k: _text(v, MAX_FIELD_BYTES) for k, v in error.metadata.items()},
        )
    )
    details = [info]
    if isinstance(error, InvalidArgument) and error.violations:
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=_violations(error)))
        details.append(bad)
    if isinstance(error, ResourceExhausted) and error.retry_delay_s is not None:
        retry = any_pb2.Any()
        delay = error_details_pb2.RetryInfo()
        delay.retry_delay.FromMilliseconds(max(1, round(error.retry_delay_s * 1000)))
        retry.Pack(delay)
        details.append(retry)
    return status_pb2.Status(code=error.code.value[0], message=_text(error.message, MAX_MESSAGE_BYTES), details=details)


def status_for(exc: BaseException, where: str) -> status_pb2.Status:
    """The status a call failed by `exc` ends with: a domain error as itself, a downstream
    service's error as it came, anything else as an INTERNAL error that names nothing of it (the
    service logs it)."""
    if isinstance(exc, DomainError):
        return status_of(exc)
    if isinstance(exc, grpc.aio.AioRpcError):  # a downstream service's answer, as the interceptor passes it on
        try:
            passed = rpc_status.from_call(exc)
        except ValueError:  # details that contradict the call's code or message: the call's own word
            passed = None
        return passed or status_pb2.Status(code=exc.code().value[0], message=exc.details() or "")
    log.error("unhandled error in %s", where, exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error; the service logged it")


def _run_of(request: object) -> str:
    """The run a request is about, for the logs."""
    for attr in ("name", "run"):
        value = getattr(request, attr, "")
        if not isinstance(value, str):
            value = getattr(value, "name", "")  # a request that carries the run itself
        if isinstance(value, str) and "/runs/" in value:
            return value
    return ""


def _status_code(exc: BaseException) -> grpc.StatusCode:
    """The code the caller will get for `exc`, for the RPC metrics."""
    if isinstance(exc, DomainError):
        return exc.code
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN  # the servicer aborted by itself with a code we do not see here
    return grpc.StatusCode.INTERNAL


# Checks who is calling before a method runs: raises a DomainError to refuse the call. It runs in
# the task of the call, so what it puts in a context variable the servicer sees.
Guard = Callable[[str, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Checks the caller, maps errors at one boundary, binds the run to the logs, counts and
    times every RPC."""

    def __init__(self, service: str, guard: Guard):
        self.service = service
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith("/grpc."):
            return handler  # health and reflection: not ours to count
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client-streaming methods would pass unguarded: none of ours is one, and none is served.
        log.error("%s: client-streaming methods are not served (the guard does not cover them)", method)
        return None

    def _wrap_unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            bind_run(_run_of(request))
            code = grpc.StatusCode.OK
            try:
                await self.guard(method, context)
                return await behavior(request, context)
            except BaseException as exc:  # noqa: BLE001 - every failure is mapped, then re-raised by abort
                code = _status_code(exc)
                await self._abort(exc, context, method)
            finally:
                self._observe(method, code, started)

        return wrapped

    def _wrap_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = time.perf_counter()
            bind_run(_run_of(request))
            code = grpc.StatusCode.OK
            try:
                await self.guard(method, context)
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:  # noqa: BLE001
                code = _status_code(exc)
                await self._abort(exc, context, method)
            finally:
                self._observe(method, code, started)

        return wrapped

    async def _abort(self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        """Answers the caller for `exc`; always raises."""
        # Cancelled, or a streaming handler closed (GeneratorExit: nothing may be awaited then, and
        # an abort on a call that is gone would wait for ever), or already answered: nothing to send.
        if isinstance(exc, (asyncio.CancelledError, GeneratorExit, grpc.aio.AbortError)):
            raise exc
        if isinstance(exc, DomainError):
            await context.abort_with_status(to_status(exc))
        if isinstance(exc, grpc.aio.AioRpcError):
            # A downstream service's answer travels on unchanged, details included.
            await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))
        await context.abort_with_status(rpc_status.to_status(status_for(exc, method)))
        raise AssertionError("unreachable")  # pragma: no cover

    def _observe(self, method: str, code: grpc.StatusCode, started: float) -> None:
        RPC_HANDLED.labels(self.service, method, code.name).inc()
        RPC_SECONDS.labels(self.service, method).observe(time.perf_counter() - started)


@dataclass
class Service:
    """A built service: its gRPC server plus the background work that lives as long as it does."""

    name: str
    server: grpc.aio.Server
    port: int
    service_names: list[str]
    health: health.aio.HealthServicer
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.server.start()
        for work in self.background:
            self._tasks.append(asyncio.create_task(work(), name=f"{self.name}:{work.__name__}"))
        for service_name in ["", *self.service_names]:
            await self.health.set(service_name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on port %d", self.name, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for hook in self.on_stop:
            await hook()


def new_service(
    name: str, settings: ServiceSettings, service_names: list[str], guard: Guard, *, mutual_tls: bool = False
) -> Service:
    """A grpc.aio server with our interceptors, health and reflection, bound to settings' port.

    `guard` checks every call of ours (health and reflection are open); internal services use
    `services.common.auth.service_guard`, the gateway its API keys. With `mutual_tls` and TLS
    settings, the port takes only clients with a certificate of the platform's CA; `plain_port`
    then serves gRPC health probes and runners' callbacks in plaintext (the guard still applies).
    The caller adds its servicers and background work, then starts it.
    """
    tracing = [aio_server_interceptor()] if tracing_on() else []  # type: ignore[no-untyped-call]
    server = grpc.aio.server(interceptors=[*tracing, ServiceInterceptor(name, guard)], options=CHANNEL_OPTIONS)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    tls = settings.credentials().tls
    address = f"{settings.host}:{settings.port}"
    if tls is not None and mutual_tls:
        cert, key, ca = tls.read()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = server.add_secure_port(address, credentials)
        if settings.plain_port is not None and not server.add_insecure_port(f"{settings.host}:{settings.plain_port}"):
            raise RuntimeError(f"{name}: cannot bind {settings.host}:{settings.plain_port}")
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"{name}: cannot bind {settings.host}:{settings.port}")
    return Service(name, server, port, service_names, health_servicer)


S = TypeVar("S", bound=ServiceSettings)


def serve(build: Callable[[S], Awaitable[Service]], settings: S, name: str) -> None:
    """Runs a service until SIGTERM or SIGINT, then stops it gracefully."""
    setup_logging(name, settings.log_level, settings.log_format)
    setup_tracing(name, settings.trace_exporter)  # before `build` opens channels and a server

    async def main() -> None:
        # Handlers first: a SIGTERM during migrations or start-up still stops the service cleanly.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        service = await build(settings)
        if settings.metrics_port is not None:
            http, _thread = start_http_server(settings.metrics_port, addr=settings.host)
            log.info("%s metrics on port %d", name, http.server_port)
        await service.start()
        # What start-up made lives as long as the process: out of the collector's sight (gc.freeze,
        # after collecting start-up's garbage), and young collections ten times rarer than
        # CPython's default (700 allocations), which a service making short-lived protobufs and
        # rows for every call otherwise pays for often; older generations as often as before,
        # relative to the young one. bench-submit: ≈ 10-15 % less CPU per submission.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        await stopping.wait()
        log.info("%s stopping", name)
        await service.stop(settings.shutdown_grace_s)

    asyncio.run(main())
