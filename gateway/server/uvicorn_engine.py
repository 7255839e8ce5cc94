"""One serving worker on uvicorn with httptools: the fast engine (``engine = "uvicorn"``).

Why uvicorn and not granian (docs/server.md has the figures): the same throughput per core
on this gateway, half the memory, and it runs inside the gateway's own process on the
gateway's own sockets: one ``uvicorn.Server`` serves every bind (public and admin) of a
worker, the supervisor, drain and SIGHUP reload are the same code as on Hypercorn.

What the gateway adds to uvicorn's HTTP/1.1 protocol (:class:`GatewayHttpToolsProtocol`),
so that the same settings mean the same on both engines:

- ``keep_alive_timeout`` (hypercorn.toml): a connection that has not started a request
  head within it of opening or of its last response is closed (uvicorn alone never times
  out a connection that has sent nothing yet). One idle timer, the gateway's, in seconds
  as configured: uvicorn's own (``timeout_keep_alive``, whole seconds: 0.5 became 0, which
  closed every connection after its first response) is never armed.
- ``[gateway] header_timeout``: from the first byte of a request head to its end, at most
  that long, then 408 and close (as gateway/server/protocol_guard.py does on Hypercorn).
- ``h11_max_incomplete_size``: a request head still incomplete after a read and larger
  than this is answered 431 and the connection closed (h11's rule; httptools has no cap).
- ``keep_alive_max_requests``: the response to a connection's last allowed request says
  ``Connection: close``; during the drain every response does.
- The parser's own refusals carry the gateway's JSON error body, as on Hypercorn, and the
  gateway's status: 501 for a method token httptools does not know (llhttp has a fixed
  list), 413 for a Content-Length too large to parse, else 400 (bytes that are not HTTP,
  such as a TLS ClientHello sent to a plain port, are no method: 400, as on Hypercorn).

WebSocket handshakes reach the app as on Hypercorn (uvicorn's sans-I/O ``websockets``
protocol, with the ``websocket.http.response`` extension); ``Upgrade: h2c`` is ignored.
uvicorn's own signal handling is replaced by the gateway's (SIGTERM/SIGINT drain; SIGHUP
reloads in the app, gateway/ops/reload.py), its access log is off (the gateway has its own),
and it never rewrites the client address from ``X-Forwarded-For`` (``proxy_headers``
off: the gateway decides which peers to trust, ``[gateway] trusted_proxies``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from typing import Any, NamedTuple

import httptools
import uvicorn
from hypercorn.config import Config, Sockets
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway.config import GatewaySettings
from gateway.edge.errors import error_body
from gateway.environment import Environment
from gateway.server.app_loader import build_app
from gateway.server.drain import going_away, on_stop_signals, stop_accepting, wait_quiet
from gateway.websocket.client_limits import (
    ACCEPT_MAX_MESSAGE_SIZE,
    INVALID_UTF8,
    SERVER_FAILED,
    bound_inflation,
)

log = logging.getLogger("quartgate")


#: How often each worker checks its connections' idle and header timeouts (seconds): a
#: timeout fires up to this much late.
SWEEP = 0.25
#: How a request head that starts with a method token begins (RFC 9110 9.1, 5.6.2): the
#: token, then a space or the end of what has arrived.
_METHOD_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?: |\Z)")


class Refusal(NamedTuple):
    """An answer the engine gives itself, before the app: the gateway's JSON error body,
    then the connection closes."""

    status: int
    code: str
    response: bytes


def _refusal(status: int, reason: str, code: str, detail: str) -> Refusal:
    body = error_body(code, detail, "")
    response = (
        b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%b" % (status, reason.encode(), len(body), body)
    )
    return Refusal(status, code, response)


class Limits:
    """Per-worker settings and drain state that every connection's protocol reads."""

    def __init__(self, config: Config, header_timeout: float) -> None:
        self.idle_timeout = float(config.keep_alive_timeout)
        self.header_timeout = header_timeout
        self.head_limit = int(config.h11_max_incomplete_size)
        self.max_requests = int(config.keep_alive_max_requests)
        self.draining = False
        self.head_too_large = _refusal(
            431, "Request Header Fields Too Large", "headers_too_large", "request head too large"
        )
        self.head_timed_out = _refusal(
            408,
            "Request Timeout",
            "request_header_timeout",
            f"no complete request head within {header_timeout:g} s",
        )
        self.unknown_method = _refusal(
            501, "Not Implemented", "method_not_implemented", "unknown request method"
        )
        self.too_large = _refusal(
            413, "Content Too Large", "payload_too_large", "request body too large"
        )
        self.bad_request = _refusal(
            400,
            "Bad Request",
            "bad_request",
            "malformed HTTP/1.1 request (refused by the HTTP parser)",
        )


class GatewayConfig(uvicorn.Config):
    """uvicorn's settings plus the worker's :class:`Limits`, which every protocol reads."""

    def __init__(self, app: Any, limits: Limits, **settings: Any) -> None:
        super().__init__(app, http=GatewayHttpToolsProtocol, **settings)
        self.limits = limits


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the timeouts, the head cap and the request cap.

    A connection is idle from its opening or its last response until a request head is
    complete (Hypercorn's idle timer runs as long): past ``keep_alive_timeout`` it is
    closed. From a head's first byte, pipelined heads included, ``header_timeout`` runs
    too: past it, 408. While a request is in progress neither applies (the body timeout is
    the gateway's own, ``[gateway] body_timeout``). Both are checked by one sweep of the
    worker's connections every :data:`SWEEP` seconds, not by timers set per request: a
    request only notes two times (two timers per request cost 10 µs, 7% of its CPU).
    """

    config: GatewayConfig

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._limits = self.config.limits
        self._requests = 0
        self._head_bytes = 0
        self._refused: Refusal | None = None  # waits for the responses in flight
        #: loop.time() when the connection went idle / a head began; None when not.
        self._idle_since: float | None = self.loop.time()
        self._head_since: float | None = None
        #: The read being parsed while no head has begun (where the next head starts),
        #: and the first bytes of the current head when it began at the start of a read.
        self._feed: bytes | None = None
        self._head_start: bytes | None = None

    def data_received(self, data: bytes) -> None:
        """uvicorn's, with the head accounting and the parser's refusals told apart."""
        began_before = self._head_since is not None
        cycle = self.cycle  # no request in progress either: the next head starts here
        at_rest = not began_before and (cycle is None or cycle.response_complete)
        self._feed = data if at_rest else None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserInvalidMethodError:
            self._refuse(self._method_refusal(data, began_before))
            return
        except httptools.HttpParserError as error:
            overflow = "Content-Length overflow" in str(error)
            self._refuse(self._limits.too_large if overflow else self._limits.bad_request)
            return
        except httptools.HttpParserUpgrade:
            # Upgrade: websocket goes to the app as a WebSocket handshake (as on Hypercorn);
            # any other Upgrade (h2c) is never honoured: served as plain HTTP/1.1. A head
            # refused already (a handshake with a body) is not upgraded: uvicorn would
            # raise on it (a traceback for each such request).
            if self._should_upgrade() and self._refused is None and not self.transport.is_closing():
                self.handle_websocket_upgrade()
        finally:
            self._feed = None
        if self._head_since is not None and not self.transport.is_closing():
            self._head_bytes += len(data)  # the head is still incomplete after this read
            if self._head_bytes > self._limits.head_limit:
                self._refuse(self._limits.head_too_large)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_since = self.loop.time()
        self._head_bytes = 0
        feed = self._feed
        # A head that begins a read: its first bytes. One behind another request in the
        # same read begins at an offset the parser does not tell: None.
        self._head_start = feed[:64] if feed is not None else None
        self._feed = None

    def _method_refusal(self, data: bytes, began_before: bool) -> Refusal:
        """501 for a method token llhttp does not know (``BREW``), 400 for bytes that are
        no method at all (a TLS ClientHello on a plain port): the two h11 tells apart."""
        start = self._head_start
        if start is None:  # behind another request in the same read: a token, as before
            return self._limits.unknown_method
        if began_before:  # the head's first bytes came in an earlier read
            start += data[:64]
        if _METHOD_TOKEN.match(start.lstrip(b"\r\n")):
            return self._limits.unknown_method
        return self._limits.bad_request

    def on_headers_complete(self) -> None:
        self._head_since = self._idle_since = None
        if self.parser.should_upgrade() and any(
            name in (b"content-length", b"transfer-encoding") for name, _ in self.headers
        ):
            # A WebSocket handshake with a body: llhttp waits on it and uvicorn never answers.
            # Bytes before a 101 are read as frames by one hop and as a body by another.
            self._refuse(self._limits.bad_request)
            return
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            self._requests += 1
            if self._limits.draining or self._requests >= self._limits.max_requests:
                cycle.keep_alive = False

    def on_response_complete(self) -> None:
        """uvicorn's, less its keep-alive timer: the sweep is the connection's idle timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:  # the next pipelined request runs; the connection is not idle
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._refused is not None:  # the responses before the refused bytes went out
            self._answer(self._refused)
            return
        self._idle_since = self.loop.time()

    def send_400_response(self, msg: str) -> None:
        self._refuse(self._limits.bad_request)

    def busy(self) -> bool:
        """A request in progress: its head is complete and its response is not."""
        return self.cycle is not None and not self.cycle.response_complete

    def sweep(self, now: float) -> None:
        """Close this connection if it has been idle, or sending a head, for too long."""
        if self.transport.is_closing() or self.busy():
            return
        limits = self._limits
        head, idle = self._head_since, self._idle_since
        if head is not None and limits.header_timeout and now - head >= limits.header_timeout:
            self._refuse(limits.head_timed_out)
        elif idle is not None and limits.idle_timeout and now - idle >= limits.idle_timeout:
            self.transport.close()

    def _refuse(self, refusal: Refusal) -> None:
        """Answer ``refusal`` and close, once every request before it has its response.

        Nothing after the refused bytes is read: a request smuggled behind them never runs.
        """
        self._head_since = self._idle_since = None
        log.info(
            "client %s: %d %s, answered by the server before the app",
            self.client,
            refusal.status,
            refusal.code,
        )
        if self.transport.is_closing():
            return
        if self.busy() or self.pipeline:  # a response is in flight: the refusal goes after
            self._refused = refusal
            self.transport.pause_reading()
            return
        self._answer(refusal)

    def _answer(self, refusal: Refusal) -> None:
        self.transport.write(refusal.response)
        self.transport.close()


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with its pongs under flow control, inflation bounded by
    the route's limit and protocol violations answered in one log line.

    - uvicorn answers each ping with ``transport.write`` and never stops reading, so a
      client that sends pings and reads nothing grew a worker by ~190 MB in 15 s (found by
      an adversarial pass). Here, once the transport's write buffer is over its high-water
      mark after a pong, reading stops until the client has read (``resume_writing``).
    - A compressed message inflates at most to the route's ``max_message_size`` (from the
      gateway's ``websocket.accept``), then 1009; uvicorn's own bound is its 16 MiB
      ``ws_max_size`` (gateway/websocket/client_limits.py).
    - A text message that is not UTF-8 is closed with 1007 and one log line (uvicorn logs
      a traceback for each: a log flood any client can cause); every violation the server
      closes is one line and tells the app with ``SERVER_FAILED``.
    """

    _pong_paused = False

    def handle_ping(self) -> None:
        super().handle_ping()
        if not self.writable.is_set() and not self._pong_paused:
            self._pong_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._pong_paused:
            self._pong_paused = False
            if not self.read_paused:  # the message path may hold reading paused itself
                self.transport.resume_reading()

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.accept":
            limit = message.get(ACCEPT_MAX_MESSAGE_SIZE)
            if limit:
                bound_inflation(self.conn.extensions, int(limit))
        await super().send(message)

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, with invalid UTF-8 closed by :meth:`handle_parser_exception` (one log
        line) instead of ``logger.exception`` (a traceback per message)."""
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        if self.close_sent:  # past websocket.close: dropped, reading goes on to the reply
            return
        event: Any
        if self.curr_msg_data_type == "text":
            try:
                event = {"type": "websocket.receive", "text": bytes(data).decode()}
            except UnicodeDecodeError:
                self.conn.send_close(1007, INVALID_UTF8)
                self.handle_parser_exception()
                return
        else:
            event = {"type": "websocket.receive", "bytes": data}
        self.queue.put_nowait(event)
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def handle_parser_exception(self) -> None:
        """The connection failed (a violation, a message too big): the close frame the
        library queued, one log line, the app told, then the connection closed."""
        close = self.conn.close_sent
        if close is None:  # nothing was sent: uvicorn's own handling
            super().handle_parser_exception()
            return
        log.info("client %s: WebSocket closed with %d: %s", self.client, close.code, close.reason)
        disconnect: Any = {
            "type": "websocket.disconnect",
            "code": close.code,
            "reason": close.reason,
            SERVER_FAILED: True,
        }
        self.queue.put_nowait(disconnect)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server without its signal handling: the worker's drain owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        for sock in sockets or []:  # the line Hypercorn logs for each bind, once serving
            host, port = sock.getsockname()[:2]
            log.info("Running on http://%s:%d (uvicorn engine, pid %d)", host, port, os.getpid())


def run_worker(
    config: Config,
    environment: Environment,
    sockets: Sockets | None = None,
    ready: Event | None = None,
) -> None:
    """One serving process: build the app, serve until SIGTERM/SIGINT, drain, return."""
    # engine "uvicorn": no Hypercorn workarounds
    app: Any = build_app(dataclasses.replace(environment, engine="uvicorn"))
    if sockets is None:
        sockets = config.create_sockets()
    listeners = list(sockets.insecure_sockets)
    loop_factory = None
    if config.worker_class == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, config, listeners, ready))


async def _serve(
    app: Any, config: Config, listeners: list[socket.socket], ready: Event | None
) -> None:
    limits = Limits(config, _header_timeout(app))
    settings = GatewayConfig(
        app,
        limits,
        ws=GatewayWebSocketProtocol,
        lifespan="on",
        interface="asgi3",
        loop="none",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=config.include_server_header,
        date_header=config.include_date_header,
        # No timeout_keep_alive: uvicorn's timer is never armed (on_response_complete);
        # keep_alive_timeout is the sweep's (Limits.idle_timeout), fractions honoured.
        timeout_graceful_shutdown=int(config.graceful_timeout),
        backlog=config.backlog,
    )
    server = Server(settings)
    loop = asyncio.get_running_loop()
    draining = asyncio.Event()

    def on_stop() -> None:
        if draining.is_set():  # Ctrl-C reaches the workers twice: directly and forwarded
            return
        log.info(
            "stopping: no new connections; in-flight requests get %gs", config.graceful_timeout
        )
        limits.draining = True  # every response from now on says Connection: close
        for sock in listeners:
            stop_accepting(loop, sock)
        for connection in _connections(server):
            if connection.busy():
                connection.cycle.keep_alive = False
        going_away(app)  # open WebSocket sessions: close 1001 both ways
        draining.set()

    def busy() -> int:
        return sum(1 for connection in _connections(server) if connection.busy())

    async def drained() -> None:
        await draining.wait()
        await wait_quiet(busy, config.graceful_timeout)
        # uvicorn's own shutdown follows: idle connections close at once, requests in
        # flight get graceful_timeout, then the app's lifespan shutdown.
        server.should_exit = True

    on_stop_signals(loop, on_stop, app, ready)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP)
            now = loop.time()
            for connection in _connections(server):
                connection.sweep(now)

    tasks = [asyncio.create_task(drained()), asyncio.create_task(sweep())]
    try:
        await server.serve(sockets=listeners)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _connections(server: Server) -> list[GatewayHttpToolsProtocol]:
    return [c for c in server.server_state.connections if isinstance(c, GatewayHttpToolsProtocol)]


def _header_timeout(app: Any) -> float:
    """``[gateway] header_timeout`` of the config the app was built from."""
    proxy = app.extensions.get("quartgate")
    if proxy is None:  # not the gateway's app: the gateway's default
        return GatewaySettings().header_timeout
    return float(proxy.state.config.gateway.header_timeout)
