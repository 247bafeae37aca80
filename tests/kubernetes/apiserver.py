"""A stand-in for the Kubernetes API server: kmock's HTTP server and request parsing, our semantics.

kmock (PyPI) serves real HTTP and parses Kubernetes URLs (resource, namespace, name,
subresource, action); its reactions stay available for fault injection, and are consulted
first (`server.handler[...] << 500`). Where no reaction matches, this module answers the way
the API server does for what the scheduler depends on:

- objects get `uid`, `resourceVersion` (one counter for everything), `creationTimestamp`;
  pods start `Pending`; a Secret's `stringData` becomes `data`; names conflict (409);
- list and watch filter by namespace and equality label selectors; a watch resumes after its
  `resourceVersion`, ends after `timeoutSeconds`, and answers 410 Gone (an `ERROR` event) for a
  version older than the last compaction (`compact()`);
- `pods/{name}/binding` sets `spec.nodeName` and answers 201 with a `Status` (409 if bound);
  `hold_bindings` makes answers wait until a given number of bindings has arrived, so that a
  test can tell bindings sent together from bindings sent one after another;
- `PUT pods/{name}/status`, merge `PATCH` of objects and of `nodes/{name}/status`;
- deleting a running pod is graceful (`deletionTimestamp`, then the kubelet deletes it with
  grace 0); owners' deletion garbage-collects the objects they own;
- `pods/{name}/log` as `text/plain`, streaming with `follow=true`, from the fake kubelet.

It runs in a thread with an event loop of its own, so that blocking client calls made from the
tests' loop (or from worker threads) never deadlock it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock

Key = tuple[str, str | None, str]  # (plural, namespace, name)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386)."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _selects(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class LogSource:
    """A container's log as the kubelet holds it: a file, and whether the container still runs."""

    path: Path
    running: Callable[[], bool]


@dataclass
class ApiServer:
    """Start with `with ApiServer() as api:`; `api.url` is what the client's Configuration(host=...) takes."""

    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str, str], LogSource] = field(default_factory=dict)
    handler: kmock.RawHandler = field(init=False)
    url: str = ""
    _version: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # (version, type, object)
    _compacted: int = 0
    gone_sent: int = 0  # watches told 410 Gone
    lists: int = 0  # the scheduler's list calls: nodes, and pods of a namespace (not the kubelet's)
    created: list[dict[str, Any]] = field(default_factory=list)  # every object as created (wire form)
    bindings_arrived: list[str] = field(default_factory=list)  # pods whose binding was asked, in order
    # Pods whose binding was answered by this module, each with the bindings arrived by then.
    bindings_answered: list[tuple[str, list[str]]] = field(default_factory=list)
    _hold: tuple[re.Pattern[str], int, float] | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _changed: asyncio.Condition | None = None
    _thread: threading.Thread | None = None
    _stop: asyncio.Event | None = None

    # ---- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> ApiServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="kube-apiserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the API server stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        server = self

        class Handler(kmock.RawHandler):
            async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
                await server._arrived(request)  # before the reactions, which may answer it
                try:
                    return await super()._handle(request)  # the tests' reactions (fault injection) first
                except NotImplementedError:
                    return await server._answer(request)

        async with Handler() as handler, kmock.Server(handler) as http:
            self.handler = handler
            self.url = str(http.url).rstrip("/")
            ready.set()
            await self._stop.wait()
            async with self._changed:
                self._changed.notify_all()

    def call(self, work: Callable[[], Any]) -> Any:
        """Runs `work` on the server's loop (for the tests' direct changes, which watchers then see)."""
        assert self._loop is not None

        async def run() -> Any:
            result = work()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def hold_bindings(self, pods: str, count: int, timeout_s: float = 10) -> None:
        """Answers a binding of a pod whose name matches `pods` only once `count` bindings of such
        pods have arrived (those the tests' reactions answer included), or after `timeout_s`."""
        self._hold = (re.compile(pods), count, timeout_s)

    async def _arrived(self, request: kmock.Request) -> None:
        if str(request.subresource) == "binding" and request.name:
            self.bindings_arrived.append(str(request.name))
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()

    def compact(self) -> None:
        """Forgets the history so far: a watch resuming from an older version gets 410 Gone."""

        async def compact() -> None:
            # Past every version handed out: each open watch is expired, even one that has seen
            # every event (else whether a watch is told 410 depends on when it last read).
            self._compacted = next(self._version)
            self._events.clear()
            assert self._changed is not None
            async with self._changed:
                self._changed.notify_all()  # open watches from before are told 410 Gone

        self.call(compact)

    # ---- objects ----------------------------------------------------------------------------

    def _current(self) -> int:
        return self._events[-1][0] if self._events else self._compacted

    async def _record(self, kind: str, obj: dict[str, Any]) -> None:
        version = next(self._version)
        obj["metadata"]["resourceVersion"] = str(version)
        self._events.append((version, kind, copy.deepcopy(obj)))
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _plural(self, obj: dict[str, Any]) -> str:
        return str(obj.get("_plural", ""))

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((plural, namespace, name))

    def of(self, plural: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (p, _, _), o in list(self.objects.items()) if p == plural]

    async def create(self, plural: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        metadata = obj.setdefault("metadata", {})
        if namespace is not None:
            metadata["namespace"] = namespace
        key = (plural, namespace, metadata["name"])
        if key in self.objects:
            raise _Refused(409, "AlreadyExists", f'{plural} "{metadata["name"]}" already exists')
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if plural == "pods":
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        if plural == "secrets" and "stringData" in obj:
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        obj["_plural"] = plural
        self.objects[key] = obj
        await self._record("ADDED", obj)
        self.created.append(self._wire(obj))
        return obj

    async def update(self, key: Key, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        obj = self.objects.get(key)
        if obj is None:
            raise _Refused(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        change(obj)
        await self._record("MODIFIED", obj)
        return obj

    async def remove(self, key: Key) -> dict[str, Any]:
        obj = self.objects.pop(key, None)
        if obj is None:
            raise _Refused(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        await self._record("DELETED", obj)
        uid = obj["metadata"]["uid"]
        for other_key, other in list(self.objects.items()):
            owners = other["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                await self.remove(other_key)  # the garbage collector, at once
        return obj

    # ---- HTTP -------------------------------------------------------------------------------

    async def _answer(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            return await self._route(request)
        except _Refused as refused:
            status = _status(refused.code, refused.reason, refused.message)
            return aiohttp.web.json_response(status, status=refused.code)

    async def _route(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is None:
            raise _Refused(404, "NotFound", f"no route for {request.url.path}")
        plural, namespace, name, sub = str(resource.plural), request.namespace, request.name, request.subresource
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        params = request.params
        if method == "GET" and name is None:
            if params.get("watch") in ("true", "1", "True"):
                return await self._watch(request, plural, namespace)
            if plural == "nodes" or namespace is not None:
                self.lists += 1
            items = [
                self._wire(o)
                for (p, ns, _), o in list(self.objects.items())
                if p == plural
                and (namespace is None or ns == namespace)
                and _selects(params.get("labelSelector", ""), o["metadata"].get("labels") or {})
            ]
            kind = (items[0]["kind"] if items else plural[:-1].capitalize()) + "List"
            body = {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self._current())}}
            return aiohttp.web.json_response({**body, "items": items})
        assert name is not None or method == "POST"
        key: Key = (plural, namespace, name or "")
        if method == "GET" and sub == "log":
            return await self._log(request, namespace or "", name or "")
        if method == "GET":
            obj = self.objects.get(key)
            if obj is None:
                raise _Refused(404, "NotFound", f'{plural} "{name}" not found')
            return aiohttp.web.json_response(self._wire(obj))
        if method == "POST" and sub == "binding":
            return await self._bind(key, request.data)
        if method == "POST":
            created = await self.create(plural, namespace, dict(request.data))
            return aiohttp.web.json_response(self._wire(created), status=201)
        if method == "PUT" and sub == "status":
            status = dict(request.data).get("status") or {}
            obj = await self.update(key, lambda o: o.__setitem__("status", status))
            return aiohttp.web.json_response(self._wire(obj))
        if method == "PATCH":
            patch = dict(request.data)
            if sub == "status":
                patch = {"status": patch.get("status") or {}}
            obj = await self.update(key, lambda o: _merge(o, patch))
            return aiohttp.web.json_response(self._wire(obj))
        if method == "DELETE":
            return await self._delete(key, request)
        raise _Refused(405, "MethodNotAllowed", f"{method} {request.url.path}")

    def _wire(self, obj: dict[str, Any]) -> dict[str, Any]:
        kinds = {"pods": "Pod", "nodes": "Node", "secrets": "Secret", "services": "Service"}
        out = {k: copy.deepcopy(v) for k, v in obj.items() if k != "_plural"}
        out.setdefault("apiVersion", "v1")
        out.setdefault("kind", kinds.get(self._plural(obj), "Object"))
        return out

    async def _bind(self, key: Key, binding: Any) -> aiohttp.web.StreamResponse:
        pod = self.objects.get(key)
        if pod is None:
            raise _Refused(404, "NotFound", f'pods "{key[2]}" not found')
        if self._hold is not None and self._hold[0].search(key[2]):
            pattern, count, timeout_s = self._hold
            assert self._changed is not None

            def held() -> bool:
                return len([name for name in self.bindings_arrived if pattern.search(name)]) >= count

            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(held), timeout_s)
        self.bindings_answered.append((key[2], list(self.bindings_arrived)))
        if pod["spec"].get("nodeName"):
            raise _Refused(409, "Conflict", f'pod {key[2]} is already assigned to node "{pod["spec"]["nodeName"]}"')
        node = binding["target"]["name"]

        def bind(obj: dict[str, Any]) -> None:
            obj["spec"]["nodeName"] = node
            obj.setdefault("status", {})["conditions"] = [{"type": "PodScheduled", "status": "True"}]

        await self.update(key, bind)
        return aiohttp.web.json_response(_status(201, "", ""), status=201)

    async def _delete(self, key: Key, request: kmock.Request) -> aiohttp.web.StreamResponse:
        obj = self.objects.get(key)
        if obj is None:
            raise _Refused(404, "NotFound", f'{key[0]} "{key[2]}" not found')
        body = request.data if isinstance(request.data, dict) else {}
        grace = request.params.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
        running = (
            key[0] == "pods"
            and obj["spec"].get("nodeName")
            and (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        )
        if running and str(grace) != "0":
            # Graceful: the kubelet stops the containers, then deletes the pod with grace 0.
            seconds = int(grace) if grace is not None else int(obj["spec"].get("terminationGracePeriodSeconds", 30))

            def mark(o: dict[str, Any]) -> None:
                o["metadata"].setdefault("deletionTimestamp", _now())
                o["metadata"].setdefault("deletionGracePeriodSeconds", seconds)

            obj = await self.update(key, mark)
            return aiohttp.web.json_response(self._wire(obj))
        return aiohttp.web.json_response(self._wire(await self.remove(key)))

    async def _watch(self, request: kmock.Request, plural: str, namespace: str | None) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None and self._changed is not None and self._stop is not None
        params = request.params
        selector = params.get("labelSelector", "")
        since = int(params.get("resourceVersion") or 0) if params.get("resourceVersion") else self._current()
        timeout = float(params.get("timeoutSeconds") or 1800)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._stop.is_set():
            if since < self._compacted:
                gone = _status(410, "Expired", f"too old resource version: {since} ({self._compacted})")
                await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                self.gone_sent += 1
                break
            for version, kind, obj in [e for e in self._events if e[0] > since]:
                since = version
                if self._plural(obj) != plural or namespace not in (None, obj["metadata"].get("namespace")):
                    continue
                if not _selects(selector, obj["metadata"].get("labels") or {}):
                    continue
                line = json.dumps({"type": kind, "object": self._wire(obj)}).encode() + b"\n"
                try:
                    await response.write(line)
                except (ConnectionResetError, RuntimeError):
                    return response
            left = deadline - loop.time()
            if left <= 0:
                break
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(partial(self._news, since)), left)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    def _news(self, since: int) -> bool:
        """Something for a watch that has seen `since`: a later event, a compaction, or the end."""
        assert self._stop is not None
        return self._stop.is_set() or self._current() > since or since < self._compacted

    async def _log(self, request: kmock.Request, namespace: str, name: str) -> aiohttp.web.StreamResponse:
        assert request._raw_request is not None
        pod = self.objects.get(("pods", namespace, name))
        if pod is None:
            raise _Refused(404, "NotFound", f'pods "{name}" not found')
        container = request.params.get("container") or pod["spec"]["containers"][0]["name"]
        source = self.logs.get((namespace, name, container))
        if source is None:
            raise _Refused(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start')
        follow = request.params.get("follow") in ("true", "1", "True")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request._raw_request)
        offset = 0
        while True:
            running = source.running()
            try:
                with open(source.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                await response.write(chunk)
            if not follow or (not running and not chunk):
                break
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response


class _Refused(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def node_object(name: str, product: str, gpus: int, *, ready: bool = True) -> dict[str, Any]:
    """A GPU node as the NVIDIA device plugin and GPU feature discovery label it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, "kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "256Gi"},
            "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "32", "memory": "256Gi"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
