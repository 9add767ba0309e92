"""The HTTP face of the double: the Kubernetes REST API, routed to the store.

Paths, verbs and answers follow https://kubernetes.io/docs/reference/using-api/api-concepts/:
creates answer 201, errors are ``kind: Status`` bodies with ``reason`` and ``code``,
lists carry ``metadata.resourceVersion``, ``?watch=true`` streams newline-delimited JSON
events (from ``resourceVersion``, filtered by ``labelSelector``/``fieldSelector``, ended
by ``timeoutSeconds``), deletes answer 200 with a ``Status`` when the object is gone and
202 with the object when it is going (graceful or foreground). Every request but
``/healthz``, ``/livez`` and ``/readyz`` needs ``Authorization: Bearer <token>``
(401 otherwise), compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import yaml
from aiohttp import web

from . import portforward, rbac, resources
from .merge import MergeError, json_merge_patch, json_patch, strategic_merge_patch
from .resources import ResourceType
from .selectors import SelectorError, field_selector, label_selector
from .store import ApiError, Store

if TYPE_CHECKING:
    from .kubelet import Kubelet

__all__ = ["Recorded", "make_app"]

Obj = dict[str, Any]
_OPEN = {"/healthz", "/livez", "/readyz"}


@dataclass(frozen=True)
class Recorded:
    """One request the double answered (``.requests``); bodies are parsed JSON/YAML."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any = field(repr=False)  # may hold a Secret's token: never in a repr
    status: int = 0

    @property
    def url(self) -> str:
        """Path and query, as sent."""
        return self.path + (f"?{urlencode(self.query)}" if self.query else "")


def _verb(method: str, target: object) -> str:
    """The RBAC verb of a request (``get`` of a named object, ``list`` of a collection)."""
    named = isinstance(target, _Target) and target.name is not None
    return {"GET": "get" if named else "list", "POST": "create", "PUT": "update",
            "PATCH": "patch", "DELETE": "delete"}.get(method, "")


def _status_response(err: ApiError) -> web.Response:
    return web.json_response(err.status(), status=err.code)


@dataclass
class _Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None


def _parse(path: str) -> _Target | Obj | None:
    """A resource target, a discovery document, or None (404)."""
    segs = [s for s in path.split("/") if s]
    if segs == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if segs == ["apis"]:
        return resources.api_group_list()
    if segs[:1] == ["api"] and len(segs) >= 2:
        group, version, rest = "", segs[1], segs[2:]
    elif segs[:1] == ["apis"] and len(segs) >= 3:
        group, version, rest = segs[1], segs[2], segs[3:]
    else:
        return None
    if not rest:
        return resources.api_resource_list(group, version)
    ns: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and resources.find(group, version, rest[2]):
        ns, rest = rest[1], rest[2:]
    rt = resources.find(group, version, rest[0])
    if rt is None or len(rest) > 3:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in rt.subresources:
        return None
    if rt.namespaced and name is not None and ns is None:
        return None
    return _Target(rt, ns, name, sub)


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        if "yaml" in content_type:
            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ApiError(400, "BadRequest", f"error decoding YAML: {exc}") from exc
        raise ApiError(400, "BadRequest", "the body is not valid JSON") from None


def _flag(q: Any, name: str) -> bool:
    return str(q.get(name, "")).lower() in ("1", "true")


class Api:
    """The request handlers, bound to one store and one kubelet."""

    def __init__(self, store: Store, kubelet: Kubelet, token: str) -> None:
        self.store, self.kubelet, self.token = store, kubelet, token
        self.requests: list[Recorded] = []
        self.streams: set[asyncio.Task[Any]] = set()

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        """Authenticate, answer ApiErrors as Status bodies, and record the request."""
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        status = 500
        try:
            if request.path not in _OPEN:
                got = request.headers.get("Authorization", "")
                if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                    self._check_account(request, got.removeprefix("Bearer "))
            self._check_forbidden(request)
            resp = await handler(request)
            status = resp.status
            return resp
        except ApiError as err:
            status = err.code
            return _status_response(err)
        finally:
            with contextlib.suppress(ApiError):
                body = _decode(raw, ctype)
            self.requests.append(Recorded(request.method, request.path, dict(request.query),
                                          ctype, body if raw else None, status))

    def _check_account(self, request: web.Request, bearer: str) -> None:
        """A pod's service-account token: 401 if unknown, 403 unless a Role allows it."""
        who = self.kubelet.accounts.who(bearer)
        if who is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        target = _parse(request.path)
        verb = _verb(request.method, target)
        if isinstance(target, _Target):
            rt = target.rt
            plural = f"{rt.plural}/{target.sub}" if target.sub else rt.plural
            if rbac.allowed(self.store, who, verb, rt.group, plural, target.namespace,
                            target.name):
                return
            group, ns, name = rt.group, target.namespace, target.name
        else:
            plural, group, ns, name = request.path, "", None, None
        user = f"system:serviceaccount:{who[0]}:{who[1]}"
        named = f' "{name}"' if name else ""
        raise ApiError(403, "Forbidden", f'{plural}{"." + group if group else ""}{named} is '
                       f'forbidden: User "{user}" cannot {verb} resource "{plural}" in API '
                       f'group "{group}" in the namespace "{ns}"')

    def _check_forbidden(self, request: web.Request) -> None:
        """Refuse a request a ``forbid`` fault rule covers, as RBAC refuses it."""
        target = _parse(request.path)
        if not isinstance(target, _Target) or not self.kubelet.faults.rules:
            return
        verb = _verb(request.method, target)
        if not self.kubelet.faults.forbidden(verb, target.rt.plural):
            return
        group = target.rt.group
        what = f'{target.rt.plural}{"." + group if group else ""}'
        name = f' "{target.name}"' if target.name else ""
        raise ApiError(403, "Forbidden", f'{what}{name} is forbidden: User "k8s-double-user" '
                       f'cannot {verb} resource "{target.rt.plural}" in API group "{group}" in '
                       f'the namespace "{target.namespace}"')

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request."""
        path = request.path
        if path in _OPEN:
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response({"major": "1", "minor": "37", "gitVersion": "v1.37.0",
                                      "platform": "linux/amd64", "goVersion": "k8s-double"})
        target = _parse(path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not isinstance(target, _Target):
            return web.json_response(target)
        if target.name is None:
            return await self._collection(request, target)
        if target.sub == "log":
            return await self._log(request, target)
        if target.sub == "portforward":
            return await self._portforward(request, target)
        return await self._item(request, target)

    # --- collections ---------------------------------------------------------------------
    def _matcher(self, q: Any) -> Callable[[Obj], bool]:
        try:
            labels = label_selector(q.get("labelSelector"))
            fields = field_selector(q.get("fieldSelector"))
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from exc
        return lambda o: labels(o["metadata"].get("labels") or {}) and fields(o)

    async def _collection(self, request: web.Request, t: _Target) -> web.StreamResponse:
        q = request.query
        ns = t.namespace if t.rt.namespaced else None
        if request.method == "GET":
            match = self._matcher(q)
            if _flag(q, "watch"):
                return await self._watch(request, t.rt, ns, match, q.get("resourceVersion"),
                                         q.get("timeoutSeconds"))
            return web.json_response(self.store.list_objects(t.rt, ns, match))
        if request.method == "POST":
            if t.rt.namespaced and ns is None:
                raise ApiError(405, "MethodNotAllowed", "create needs a namespace in the path")
            body = _decode(await request.read(), request.headers.get("Content-Type", ""))
            self._check_kind(t.rt, body)
            obj = self.store.create(t.rt, ns or "", body, q.get("fieldManager") or
                                    _manager(request))
            return web.json_response(obj, status=201)
        if request.method == "DELETE":
            match = self._matcher(q)
            opts = await self._delete_options(request)
            out = []
            for o in [o for o in self.store.items(t.rt, ns) if match(o)]:
                meta = o["metadata"]
                obj, _ = self.store.delete(t.rt, meta.get("namespace", ""), meta["name"],
                                           opts.get("propagationPolicy"),
                                           opts.get("gracePeriodSeconds"))
                out.append(obj)
            return web.json_response({"kind": f"{t.rt.kind}List", "apiVersion":
                                      t.rt.api_version, "metadata": {
                                          "resourceVersion": str(self.store.revision)},
                                      "items": out})
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed here")

    def _check_kind(self, rt: ResourceType, body: Any) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        if body.get("apiVersion") not in (None, rt.api_version):
            raise ApiError(400, "BadRequest", f"the API version in the data "
                           f"({body.get('apiVersion')}) does not match the expected API "
                           f"version ({rt.api_version})")
        if body.get("kind") not in (None, rt.kind):
            raise ApiError(400, "BadRequest", f"the kind in the data ({body.get('kind')}) "
                           f"does not match the expected kind ({rt.kind})")

    async def _watch(self, request: web.Request, rt: ResourceType, ns: str | None,
                     match: Callable[[Obj], bool], rv: str | None, timeout: str | None
                     ) -> web.StreamResponse:
        try:
            w = self.store.watch(rt, ns, match, rv)
        except ApiError as err:
            if err.code != 410:
                raise
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            await resp.write(json.dumps({"type": "ERROR", "object": err.status()}).encode()
                             + b"\n")
            await resp.write_eof()
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                           "Transfer-Encoding": "chunked"})
        await resp.prepare(request)
        deadline = time.monotonic() + float(timeout) if timeout else None
        task = asyncio.current_task()
        if task is not None:
            self.streams.add(task)
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(w.queue.get(), left)
                except TimeoutError:
                    break
                if item is None:
                    break
                kind, obj = item
                await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(w)
            if task is not None:
                self.streams.discard(task)
        return resp

    # --- single objects ------------------------------------------------------------------
    async def _delete_options(self, request: web.Request) -> Obj:
        body = _decode(await request.read(), request.headers.get("Content-Type", "")) or {}
        opts = {k: body.get(k) for k in ("propagationPolicy", "gracePeriodSeconds")}
        q = request.query
        if q.get("propagationPolicy"):
            opts["propagationPolicy"] = q["propagationPolicy"]
        if q.get("gracePeriodSeconds"):
            opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        if body.get("orphanDependents") is True:
            opts["propagationPolicy"] = "Orphan"
        return opts

    async def _item(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert t.name is not None
        rt, ns, name, q = t.rt, t.namespace or "", t.name, request.query
        method = request.method
        if method == "GET":
            obj = self.store.get(rt, ns, name)
            return web.json_response(_scale(rt, obj) if t.sub == "scale" else obj)
        if method == "DELETE":
            opts = await self._delete_options(request)
            obj, gone = self.store.delete(rt, ns, name, opts.get("propagationPolicy"),
                                          opts.get("gracePeriodSeconds"))
            if gone:
                return web.json_response({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": rt.group, "kind": rt.plural,
                                "uid": obj["metadata"]["uid"]}})
            return web.json_response(obj, status=202)
        body = _decode(await request.read(), request.headers.get("Content-Type", ""))
        if not isinstance(body, dict | list):
            raise ApiError(400, "BadRequest", "the body must be an object")
        manager = q.get("fieldManager") or _manager(request)
        if method == "PUT":
            return web.json_response(self._put(t, body, manager))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype in ("application/apply-patch+yaml", "application/apply-patch+cbor"):
                if t.sub is not None and t.sub != "status":
                    raise ApiError(415, "UnsupportedMediaType", "apply is not supported here")
                if not q.get("fieldManager"):
                    raise ApiError(400, "BadRequest", "fieldManager is required for apply "
                                   "requests")
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "an applied configuration is an object")
                if t.sub == "status":
                    live = self.store.get(rt, ns, name)
                    live["status"] = json_merge_patch(live.get("status"), body.get("status"))
                    return web.json_response(self.store.commit(rt, live, status_only=True))
                obj, created = self.store.apply(rt, ns, name, body, q["fieldManager"],
                                                _flag(q, "force"))
                return web.json_response(obj, status=201 if created else 200)
            live = self.store.get(rt, ns, name)
            if t.sub == "scale":
                live = _scale(rt, live)
            try:
                patched = self._patch(rt, live, body, ctype)
            except MergeError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            if t.sub == "scale":
                return web.json_response(self._set_scale(t, patched))
            return web.json_response(self.store.commit(rt, patched,
                                                       status_only=t.sub == "status",
                                                       manager=manager))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _put(self, t: _Target, body: Any, manager: str) -> Obj:
        assert t.name is not None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        live = self.store.get(t.rt, t.namespace or "", t.name)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and rv != live["metadata"]["resourceVersion"]:
            what = f"{t.rt.plural}.{t.rt.group}" if t.rt.group else t.rt.plural
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {what} '
                           f'"{t.name}": the object has been modified; please apply your '
                           "changes to the latest version and try again")
        if t.sub == "scale":
            return self._set_scale(t, body)
        if t.sub is None:
            self._check_kind(t.rt, body)
        body.setdefault("metadata", {})
        body["metadata"]["name"] = t.name
        if t.rt.namespaced:
            body["metadata"]["namespace"] = t.namespace
        return self.store.commit(t.rt, body, status_only=t.sub == "status", manager=manager)

    def _patch(self, rt: ResourceType, live: Obj, body: Any, ctype: str) -> Obj:
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
            return json_patch(live, body)
        if ctype == "application/merge-patch+json":
            return json_merge_patch(live, body)
        if ctype == "application/strategic-merge-patch+json" and rt.builtin:
            return strategic_merge_patch(live, body)
        raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                       "format - accepted media types include: application/json-patch+json, "
                       "application/merge-patch+json, application/apply-patch+yaml"
                       + (", application/strategic-merge-patch+json" if rt.builtin else ""))

    def _set_scale(self, t: _Target, scale: Obj) -> Obj:
        assert t.name is not None
        live = self.store.get(t.rt, t.namespace or "", t.name)
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError.invalid(t.rt, t.name, [f"spec.replicas: Invalid value: {replicas}: "
                                                  "must be greater than or equal to 0"])
        live["spec"]["replicas"] = replicas
        return _scale(t.rt, self.store.commit(t.rt, live))

    # --- pods' logs and port-forward -----------------------------------------------------
    async def _log(self, request: web.Request, t: _Target) -> web.StreamResponse:
        q = request.query
        assert t.name is not None
        source = self.kubelet.log_source(t.namespace or "", t.name, q.get("container"),
                                         _flag(q, "previous"))
        tail = int(q["tailLines"]) if q.get("tailLines") else None
        data = source.text(tail)
        if not _flag(q, "follow"):
            return web.Response(body=data, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        if data:  # (an empty write would end the chunked body)
            await resp.write(data)
        offset = source.size()
        task = asyncio.current_task()
        if task is not None:
            self.streams.add(task)
        try:
            while True:
                more = await source.wait_beyond(offset)
                if more is None:
                    break
                offset += len(more)
                await resp.write(more)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self.streams.discard(task)
        return resp

    async def _portforward(self, request: web.Request, t: _Target) -> web.StreamResponse:
        assert t.name is not None
        pod = self.store.get(t.rt, t.namespace or "", t.name)
        status = pod.get("status") or {}
        if status.get("phase") != "Running" or not status.get("podIP"):
            raise ApiError(400, "BadRequest", f"unable to forward port because pod is not "
                           f"running. Current status={status.get('phase', 'Pending')}")
        ports = []
        for value in request.query.getall("ports", []):
            for p in value.split(","):
                if not p.strip().isdigit() or not 0 < int(p) < 65536:
                    raise ApiError(400, "BadRequest", f"invalid port {p!r}")
                ports.append(int(p))
        if not ports:
            raise ApiError(400, "BadRequest", "query parameter \"port\" is required")
        task = asyncio.current_task()
        if task is not None:
            self.streams.add(task)
        try:
            return await portforward.serve(request, status["podIP"], ports, t.name,
                                           pod["metadata"]["uid"])
        finally:
            if task is not None:
                self.streams.discard(task)


def _manager(request: web.Request) -> str:
    agent = request.headers.get("User-Agent", "unknown")
    return agent.split("/")[0] or "unknown"


def _scale(rt: ResourceType, obj: Obj) -> Obj:
    if "scale" not in rt.subresources:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    meta = obj["metadata"]
    selector = (obj.get("spec") or {}).get("selector") or {}
    sel = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": sel}}


def make_app(api: Api) -> web.Application:
    """The aiohttp application serving ``api``."""
    app = web.Application(middlewares=[api.middleware], client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    return app
