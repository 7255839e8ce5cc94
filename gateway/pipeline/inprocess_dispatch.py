"""Dispatch to an in-process app (gateway/inprocess.py, docs/in-process-apps.md): an ASGI
app (a blueprint is served by a Quart app of its own, so it is one too) or a WSGI app,
called directly, with ``root_path`` set to the stripped prefix so that it generates correct
URLs. HTTP requests and WebSocket sessions both come here.

A WSGI app waits for a thread of its pool (gateway/pipeline/wsgi.py) at most its upstream's
``queue_timeout``, or the route's ``timeout`` when that is set and shorter; past it the
request is answered **503 ``upstream_busy``** with ``Retry-After: 1``, as an HTTP upstream
without a free pooled connection within ``pool_timeout`` is: the app never saw the request,
so any client may send it again."""

from __future__ import annotations

import asyncio
import logging

from gateway.asgi_types import ASGIApp, Message, Receive, Send
from gateway.edge.context import RequestContext
from gateway.edge.errors import ClientDisconnected, GatewayError
from gateway.inprocess import InProcessApp, Lifespans, mount_point
from gateway.pipeline.wsgi import AppBusy, WSGIAdapter
from gateway.state import RouteRuntime

log = logging.getLogger("quartgate")


class InProcessApps:
    """The worker's in-process apps by upstream name (filled by ``create_app``) and their
    lifespans: one per worker, kept across snapshots (a reload changes routes, not apps)."""

    __slots__ = ("_lifespans", "app", "by_name")

    def __init__(self, app: ASGIApp) -> None:
        #: The gateway's Quart app (its lifespan; in-process apps are served by their own).
        self.app = app
        self.by_name: dict[str, InProcessApp] = {}
        self._lifespans: Lifespans | None = None

    @property
    def lifespans(self) -> Lifespans:
        """The ASGI lifespans of in-process ASGI apps (their state goes into each scope),
        made on first use: ``by_name`` is filled after the proxy is built."""
        if self._lifespans is None:
            self._lifespans = Lifespans(list(self.by_name.values()))
        return self._lifespans


class InProcessDispatch:
    """The dispatch stage for routes served in process, built once per snapshot."""

    __slots__ = ("_apps", "_id_header", "_max_body")

    def __init__(self, apps: InProcessApps, request_id_header: bytes, max_body_size: int) -> None:
        self._apps = apps
        self._id_header = request_id_header
        self._max_body = max_body_size

    async def to_app(
        self, runtime: RouteRuntime, ctx: RequestContext, receive: Receive, send: Send
    ) -> None:
        scope = ctx.scope
        request_id = ctx.request_id
        ctx.upstream = name = runtime.route.spec.upstream
        app = self._apps.by_name.get(name)
        header = self._id_header
        headers = [(n, v) for n, v in scope["headers"] if n != header]
        headers.append((header, request_id))
        inner = dict(scope)
        inner["headers"] = headers
        websocket = scope["type"] == "websocket"
        if websocket:  # the app gets the WebSocket scope (gateway/websocket/handshake.py)
            del inner["method"]  # the handshake's GET was for the gateway's stages only
            inner["scheme"] = "wss" if scope["scheme"] == "https" else "ws"
        if app is None or app.asgi is None:  # create_app refuses a config without it
            raise GatewayError(502, "upstream_unavailable", f"no in-process app {name!r}")
        if runtime.rewrites:
            prefix = mount_point(scope["path"], runtime.route.segments)
            inner["root_path"] = scope.get("root_path", "") + prefix
        lifespan = self._apps.lifespans.states.get(name)
        if lifespan is not None:
            inner["state"] = dict(lifespan)
        call: ASGIApp = app.asgi
        if not websocket:
            limit = self._max_body
            declared = declared_too_large(headers, limit)
            if declared is not None:
                detail = f"request body of {declared} bytes exceeds {limit}"
                raise GatewayError(413, "payload_too_large", detail)
            receive = limited_receive(receive, limit, ctx)

        policies = runtime.policies
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            kind = message["type"]
            if ctx.error == "payload_too_large" and not started:
                # The body was cut at max_body_size and the app was told the client left;
                # a WSGI adapter reads that as the end of the body, and the app would answer
                # as if the upload were whole. Its answer is dropped: the client gets 413.
                return
            if kind in ("http.response.start", "websocket.accept"):
                started = True
                message = dict(message)
                headers = [*message.get("headers", ()), (header, request_id)]
                headers += ctx.response_headers
                for policy in policies:
                    policy.on_response(ctx, headers)
                message["headers"] = headers
                ctx.status = message.get("status", 101)
            elif kind == "http.response.body":
                ctx.bytes_out += len(message.get("body", b""))
            elif kind == "websocket.http.response.start":
                started = True
                ctx.status = message["status"]
            await send(message)

        wsgi = app.wsgi
        try:
            if wsgi is not None:
                await wsgi.serve(inner, receive, send_with_id, queue_wait(runtime, wsgi))
            else:
                await call(inner, receive, send_with_id)
        except (GatewayError, ClientDisconnected, asyncio.CancelledError):
            raise
        except AppBusy as busy:  # the app never saw the request: safe to send again
            detail = f"in-process app {name!r}: {busy}"
            raise GatewayError(503, "upstream_busy", detail, [(b"retry-after", b"1")]) from None
        except Exception as error:  # the app's bug: logged with its traceback, answered 500
            log.exception(
                "in-process app %r failed on %s", name, scope["path"],
                extra={"request_id": request_id.decode("ascii")},
            )  # fmt: skip
            if started or websocket:
                return
            raise GatewayError(500, "app_error", f"in-process app {name!r} failed") from error
        if not started and ctx.error == "payload_too_large":
            limit = self._max_body
            raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")


def queue_wait(runtime: RouteRuntime, wsgi: WSGIAdapter) -> float:
    """Seconds a request of this route waits for a thread: the upstream's ``queue_timeout``,
    or the route's deadline (``timeout``, carried by ``runtime.retry``) when shorter."""
    deadline = runtime.retry.timeout if runtime.retry is not None else 0.0
    if deadline and deadline < wsgi.queue_timeout:
        return deadline
    return wsgi.queue_timeout


def limited_receive(receive: Receive, limit: int, ctx: RequestContext) -> Receive:
    """``receive`` that counts body bytes; past ``limit`` (``max_body_size``) the app is
    told the client disconnected, and the gateway answers 413 if the app had not."""

    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            ctx.bytes_in = size
            if limit and size > limit:
                ctx.error = "payload_too_large"
                return {"type": "http.disconnect"}
        return message

    return counted


def declared_too_large(headers: list[tuple[bytes, bytes]], limit: int) -> int | None:
    """A Content-Length over ``limit``, refused before the app is called."""
    if not limit:
        return None
    for name, value in headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return int(value)
    return None
