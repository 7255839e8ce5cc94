"""uvicorn's HTTP/1.1 protocol (httptools) as the gateway needs it: the uvicorn engine's ``http``.

So that the same settings mean the same on both engines:

- ``keep_alive_timeout`` (hypercorn.toml): a connection that has not started a request
  head within it of opening or of its last response is closed (uvicorn alone never times
  out a connection that has sent nothing yet). One idle timer, the gateway's, in seconds
  as configured: uvicorn's own (``timeout_keep_alive``, whole seconds: 0.5 became 0, which
  closed every connection after its first response) is never armed.
- ``[gateway] header_timeout``: from the first byte of a request head to its end, at most
  that long, then 408 and close (as gateway/server/protocol_guard.py does on Hypercorn);
  read from the worker's :class:`~gateway.server.limits.ServerLimits`, which a reload
  replaces.
- ``h11_max_incomplete_size``: a request head still incomplete after a read and larger
  than this is answered 431 and the connection closed (h11's rule; httptools has no cap).
- ``keep_alive_max_requests``: the response to a connection's last allowed request says
  ``Connection: close``; during the drain every response does.
- The parser's own refusals carry the gateway's JSON error body and status, from the one
  table (gateway/edge/refusals.py): 501 for a method token httptools does not know (llhttp
  has a fixed list), 413 for a Content-Length too large to parse, else 400 (bytes that are
  not HTTP, such as a TLS ClientHello sent to a plain port, are no method: 400, as on
  Hypercorn).

WebSocket handshakes reach the app as on Hypercorn; ``Upgrade: h2c`` is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import NamedTuple

import httptools
from hypercorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.edge.refusals import (
    BAD_REQUEST,
    HEAD_TOO_LARGE,
    HEADER_TIMEOUT,
    METHOD_NOT_IMPLEMENTED,
    PAYLOAD_TOO_LARGE,
    Refusal,
    raw_response,
)
from gateway.server.limits import ServerLimits

log = logging.getLogger("quartgate")

#: How a request head that starts with a method token begins (RFC 9110 9.1, 5.6.2): the
#: token, then a space or the end of what has arrived.
_METHOD_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?: |\Z)")


class Answer(NamedTuple):
    """A refusal as this protocol writes it: its status and code (for the log line) and the
    whole response; then the connection closes."""

    status: int
    code: str
    response: bytes


def _answer(refusal: Refusal) -> Answer:
    return Answer(refusal.status, refusal.code, raw_response(refusal))


class ConnectionLimits:
    """Per-worker settings and drain state that every connection's protocol reads: what
    hypercorn.toml says (read once, at start) and the worker's :class:`ServerLimits`."""

    def __init__(self, config: Config, server: ServerLimits) -> None:
        self.idle_timeout = float(config.keep_alive_timeout)
        self.head_limit = int(config.h11_max_incomplete_size)
        self.max_requests = int(config.keep_alive_max_requests)
        self.server = server
        self.draining = False
        self.head_too_large = _answer(HEAD_TOO_LARGE)
        self.unknown_method = _answer(METHOD_NOT_IMPLEMENTED)
        self.too_large = _answer(PAYLOAD_TOO_LARGE)
        self.bad_request = _answer(BAD_REQUEST)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the timeouts, the head cap and the request cap.

    A connection is idle from its opening or its last response until a request head is
    complete (Hypercorn's idle timer runs as long): past ``keep_alive_timeout`` it is
    closed. From a head's first byte, pipelined heads included, ``header_timeout`` runs
    too: past it, 408. While a request is in progress neither applies (the body timeout is
    the gateway's own, ``[gateway] body_timeout``). Both are checked by one sweep of the
    worker's connections every :data:`SWEEP` seconds, not by timers set per request: a
    request only notes two times (two timers per request cost 10 µs, 7% of its CPU).
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        #: The engine's ``UvicornSettings`` carries them (uvicorn_engine.py).
        self._limits: ConnectionLimits = self.config.limits  # type: ignore[attr-defined]
        self._requests = 0
        self._head_bytes = 0
        self._refused: Answer | None = None  # waits for the responses in flight
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

    def _method_refusal(self, data: bytes, began_before: bool) -> Answer:
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
        server = limits.server
        timeout = server.header_timeout
        if head is not None and timeout and now - head >= timeout:
            self._refuse(Answer(408, HEADER_TIMEOUT.code, server.head_timed_out))
        elif idle is not None and limits.idle_timeout and now - idle >= limits.idle_timeout:
            self.transport.close()

    def _refuse(self, refusal: Answer) -> None:
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

    def _answer(self, refusal: Answer) -> None:
        self.transport.write(refusal.response)
        self.transport.close()
