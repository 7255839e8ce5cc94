"""The admin listener: probes, ``/metrics`` and the token-protected admin API.

Why on Hypercorn's own binds and not a second server: Hypercorn opens every bind in the
supervisor before it starts workers, so with ``--workers N`` each worker serves the admin
port too, with no port clash and no extra event loop. ``quartgate serve`` adds
``[admin] bind`` to Hypercorn's binds; :class:`AdminDispatch` sends a request that arrived
on that port (``scope["server"]``) to the admin app and everything else to the proxy, so
admin paths never exist on a public port. The cost on the public path is one comparison.

Endpoints (docs/admin.md):
  GET  /healthz                    200 while the process serves
  GET  /readyz                     200 ready, 503 with reasons
  GET  /metrics                    Prometheus text format
  GET  /dashboard                  the live dashboard, and /dashboard/data it polls
  GET  /admin/routes               the route table
  GET  /admin/upstreams            targets with health, drain state, pool stats
  GET  /admin/config               version and source of the config in force
  POST /admin/reload               re-read the config file (every worker follows)
  POST /admin/drain | /undrain     fail /readyz on purpose (before a shutdown), or stop
  POST /admin/upstreams/{u}/targets/{t}/drain | /undrain   no new requests to a target
  POST /admin/cache/purge[?route=R][&path=/p]             stored responses removed
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

from gateway.asgi_types import ASGIApp, Receive, Scope, Send
from gateway.config import ConfigError
from gateway.observability.targets import limiters, matches, target_views
from gateway.ops import dashboard

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.observability.metrics import GatewayMetrics
    from gateway.observability.sections import ObservabilitySettings
    from gateway.ops.control import Control
    from gateway.state import GatewayState


class Observability(Protocol):
    """What the admin API reads and asks of an app's observability
    (:class:`gateway.observability.runtime.Observability` is it; a protocol here, so the
    two modules do not import each other)."""

    settings: ObservabilitySettings
    control: Control
    metrics: GatewayMetrics | None

    @property
    def state(self) -> GatewayState: ...

    def sync(self) -> None: ...

    def readiness(self) -> tuple[bool, list[str]]: ...

    def describe_config(self) -> dict[str, Any]: ...

    async def request_reload(self) -> tuple[GatewayConfig, str]: ...

    async def purge_cache(self, route: str, path: str) -> int: ...


log = logging.getLogger("quartgate")

#: Tries of one /metrics scrape before it is answered 503 ``metrics_unavailable``.
SCRAPE_TRIES = 3

Handler = Callable[[list[str]], Awaitable[tuple[int, Any]]]
JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class AdminDispatch:
    """Requests that arrived on the admin port go to the admin app; all others to ``app``."""

    __slots__ = ("admin", "app", "port")

    def __init__(self, app: ASGIApp, admin: ASGIApp, port: int) -> None:
        self.app = app
        self.admin = admin
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if server is not None and server[1] == self.port and scope["type"] == "http":
            await self.admin(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class AdminApp:
    def __init__(self, observability: Observability) -> None:
        self.obs = observability
        settings = observability.settings.admin
        self._token = settings.token.encode("utf-8") if settings is not None else b""
        self._get: dict[str, Handler] = {
            "/admin/routes": self._routes,
            "/admin/upstreams": self._upstreams,
            "/admin/config": self._config,
        }
        self._files = dashboard.static_files()
        self._post: dict[str, Handler] = {
            "/admin/reload": self._reload,
            "/admin/drain": self._drain,
            "/admin/undrain": self._undrain,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _drain_body(receive)
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/metrics"):
            if method not in ("GET", "HEAD"):
                await _json(
                    send, 405, _error("method_not_allowed", "use GET"), [(b"allow", b"GET, HEAD")]
                )
            elif path == "/healthz":
                body = {"status": "ok", "pid": os.getpid()}
                await _json(send, 200, body, head=method == "HEAD")
            elif path == "/readyz":
                await self._readyz(send, head=method == "HEAD")
            else:
                await self._metrics(send, head=method == "HEAD")
            return
        if path == "/dashboard" or path.startswith("/dashboard/"):
            await self._dashboard(method, path, send)
            return
        if not path.startswith("/admin/"):
            await _json(send, 404, _error("not_found", f"no admin endpoint {path}"))
            return
        if not self._token:
            await _json(send, 404, _error("admin_api_disabled", "set [admin] token to enable it"))
            return
        if not self._authorized(scope):
            challenge = [(b"www-authenticate", b'Bearer realm="quartgate-admin"')]
            await _json(
                send, 401, _error("unauthorized", "a valid admin token is required"), challenge
            )
            return
        if path == "/admin/cache/purge":
            status, body = await self._purge(method, scope["query_string"])
        else:
            status, body = await self._api(method, path)
        await _json(send, status, body)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(token.strip(), self._token)
        return False

    async def _api(self, method: str, path: str) -> tuple[int, Any]:
        table = self._get if method in ("GET", "HEAD") else self._post if method == "POST" else {}
        handler = table.get(path)
        if handler is not None:
            self.obs.sync()
            return await handler([])
        parts = path.split("/")  # /admin/upstreams/{u}/targets/{t}/drain
        is_target = len(parts) == 7 and parts[2] == "upstreams" and parts[4] == "targets"
        if is_target and parts[6] in ("drain", "undrain"):
            if method != "POST":
                return 405, _error("method_not_allowed", "use POST")
            self.obs.sync()
            return self._drain_target(parts[3], parts[5], parts[6] == "drain")
        if path in self._get or path in self._post:
            return 405, _error("method_not_allowed", f"{method} is not allowed on {path}")
        return 404, _error("not_found", f"no admin endpoint {path}")

    async def _purge(self, method: str, query: bytes) -> tuple[int, Any]:
        """``POST /admin/cache/purge[?route=NAME][&path=/p]``: stored responses removed, of
        one route or all, under one path or all (docs/cache.md)."""
        if method != "POST":
            return 405, _error("method_not_allowed", "use POST")
        args = parse_qs(query.decode("latin-1"))
        route = args.get("route", [""])[0]
        path = args.get("path", [""])[0]
        if route and route not in self.obs.state.runtimes:
            return 404, _error("not_found", f"no route named {route!r}")
        if path and not path.startswith("/"):
            return 400, _error("bad_request", "path must start with /")
        purged = await self.obs.purge_cache(route, path)
        return 200, {"purged": purged, "route": route or None, "path": path or None}

    # ---- probes and metrics -------------------------------------------------------------

    async def _readyz(self, send: Send, *, head: bool) -> None:
        self.obs.sync()
        ready, reasons = self.obs.readiness()
        body = {"status": "ready" if ready else "not_ready", "reasons": reasons}
        await _json(send, 200 if ready else 503, body, head=head)

    async def _metrics(self, send: Send, *, head: bool) -> None:
        metrics = self.obs.metrics
        if metrics is None:
            await _json(send, 404, _error("metrics_disabled", "[metrics] enabled = false"))
            return
        from gateway.observability.metrics import CONTENT_TYPE

        for attempt in range(SCRAPE_TRIES):
            try:
                self.obs.sync()
                body = metrics.exposition()
                break
            except Exception as error:  # a race with another worker: retried
                # With several workers a scrape reads files the others write (the shared
                # decisions, prometheus-client's multiprocess files); one read during a
                # write failed a scrape with a bare 500, rarely (a reload in the CI suite).
                if attempt + 1 == SCRAPE_TRIES:
                    log.exception("a /metrics scrape failed %d times", SCRAPE_TRIES)
                    await _json(send, 503, _error("metrics_unavailable", repr(error)))
                    return
                log.info("a /metrics scrape failed, retried: %r", error)
                await asyncio.sleep(0.01)
        headers = [(b"content-type", CONTENT_TYPE.encode("ascii"))]
        await _respond(send, 200, headers, body, head=head)

    async def _dashboard(self, method: str, path: str, send: Send) -> None:
        """The page, its files and its data (gateway/ops/dashboard.py): read-only, no token."""
        if method not in ("GET", "HEAD"):
            allow = [(b"allow", b"GET, HEAD")]
            await _json(send, 405, _error("method_not_allowed", "use GET"), allow)
            return
        head = method == "HEAD"
        if path == dashboard.DATA:
            metrics = self.obs.metrics
            if metrics is None:
                await _json(send, 404, _error("metrics_disabled", "[metrics] enabled = false"))
                return
            from gateway.version import __version__

            self.obs.sync()
            data = dashboard.snapshot(metrics.families(), self.obs.state, __version__)
            await _json(send, 200, data, head=head)
            return
        found = self._files.get(path)
        if found is None:
            await _json(send, 404, _error("not_found", f"no dashboard file {path}"))
            return
        kind, body = found
        headers = [(b"content-type", kind), *dashboard.HEADERS]
        await _respond(send, 200, headers, body, head=head)

    # ---- admin API ----------------------------------------------------------------------

    async def _routes(self, _: list[str]) -> tuple[int, Any]:
        state = self.obs.state
        routes = []
        for route in state.table.routes:  # in match precedence order
            spec = route.spec
            routes.append(
                {
                    "name": spec.name,
                    "host": spec.host,
                    "path": spec.path,
                    "methods": sorted(spec.methods) if spec.methods else None,
                    "upstream": spec.upstream,
                    "strip_prefix": spec.strip_prefix,
                    "prefix_rewrite": spec.prefix_rewrite,
                    "preserve_host": spec.preserve_host,
                }
            )
        return 200, {"routes": routes}

    async def _upstreams(self, _: list[str]) -> tuple[int, Any]:
        state = self.obs.state
        views: dict[str, list[dict[str, Any]]] = {name: [] for name in state.upstreams}
        for view in target_views(state, self.obs.control):
            pool = view.pool
            views[view.upstream].append(
                {
                    "url": view.url,
                    "weight": view.weight,
                    "healthy": view.healthy,
                    "drained": view.drained,
                    "circuit_breaker": view.breaker_state,
                    "health_checks": {
                        "passed": view.health_checks_passed,
                        "failed": view.health_checks_failed,
                    },
                    "pool": None
                    if pool is None
                    else {"in_use": pool.in_use, "idle": pool.idle, "waiting": pool.waiting},
                }
            )
        limits = dict(limiters(state))
        upstreams: list[dict[str, Any]] = []
        for name, upstream in state.upstreams.items():
            spec = upstream.spec
            limit = limits.get(name)
            upstreams.append(
                {
                    "name": name,
                    "kind": "http2" if spec.http2 else "http1",
                    "balancer": spec.balancer,
                    "max_connections": spec.max_connections,
                    "adaptive_concurrency": None
                    if limit is None
                    else {
                        "limit": limit.limit,
                        "in_flight": limit.in_flight,
                        "queued": limit.queued,
                        "refused": limit.refused,
                        "min_rtt_ms": round(limit.min_rtt * 1000, 3),
                        "probing": limit.probing,
                    },
                    "targets": views[name],
                }
            )
        for name, app in state.config.app_upstreams.items():
            upstreams.append({"name": name, "kind": "app", "app": app.app, "targets": []})
        return 200, {"upstreams": upstreams}

    async def _config(self, _: list[str]) -> tuple[int, Any]:
        return 200, {**self.obs.describe_config(), "draining": self.obs.control.draining}

    async def _reload(self, _: list[str]) -> tuple[int, Any]:
        try:
            config, previous = await self.obs.request_reload()
        except ConfigError as error:
            body = _error("invalid_config", "the config in force is unchanged")
            body["problems"] = [str(p) for p in error.problems]
            return 400, body
        return 200, {"reloaded": True, "version": config.version, "previous_version": previous}

    async def _drain(self, _: list[str]) -> tuple[int, Any]:
        return self._set_draining(True)

    async def _undrain(self, _: list[str]) -> tuple[int, Any]:
        return self._set_draining(False)

    def _set_draining(self, draining: bool) -> tuple[int, Any]:
        with self.obs.control.change() as control:
            control.draining = draining
        self.obs.sync()
        return 200, {"draining": draining, "ready": self.obs.readiness()[0]}

    def _drain_target(self, name: str, which: str, drain: bool) -> tuple[int, Any]:
        if name not in self.obs.state.upstreams:
            return 404, _error("not_found", f"no upstream {name!r}")
        found = [
            v
            for v in target_views(self.obs.state, self.obs.control)
            if v.upstream == name and matches(v, which)
        ]
        if not found:
            return 404, _error("not_found", f"upstream {name!r} has no target {which!r}")
        url = found[0].url
        with self.obs.control.change() as control:
            if drain:
                control.drained.add((name, url))
            else:
                control.drained.discard((name, url))
        self.obs.sync()
        return 200, {"upstream": name, "target": url, "drained": drain}


def _error(code: str, detail: str) -> dict[str, Any]:
    return {"error": code, "detail": detail}


async def _json(
    send: Send,
    status: int,
    body: Any,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    data = json.dumps(body).encode("utf-8")
    await _respond(send, status, [*JSON, *(headers or ())], data, head=head)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, head: bool
) -> None:
    headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _drain_body(receive: Receive) -> None:
    """Read the request body (admin calls carry none that matters), up to 64 KiB."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False) or size > 65536:
            return
