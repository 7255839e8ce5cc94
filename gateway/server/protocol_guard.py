"""Client-side protocol rules that Hypercorn 0.18 and h11 0.16 do not enforce themselves.

Each rule closes a hole found by attacking the gateway (docs/hardening.md lists them with
their tests in ``tests/test_protocol_client.py``):

- **No h2c upgrade.** Hypercorn answers ``Upgrade: h2c`` with 101 and switches protocol
  before the app sees the request; behind a proxy that forwards ``Upgrade`` (the usual
  WebSocket setup) that is a tunnel past the proxy's rules. The request is served as plain
  HTTP/1.1 instead (RFC 9110 7.8 lets a server ignore ``Upgrade``); the gateway never
  forwards ``Upgrade`` or ``HTTP2-Settings``. HTTP/2 with prior knowledge still works.
- **No obs-fold.** h11 unfolds obsolete line folding, which let an obs-folded
  ``Transfer-Encoding`` count; RFC 9112 5.2 allows rejecting it and Envoy does: 400.
- **A request-target Hypercorn would choke on** (an HTTP/2 ``:path`` with a non-ASCII
  byte made it raise and drop the connection) gets a 400 on that stream; the connection
  lives. Other bad targets are refused by the gateway itself (``gateway/edge/checks.py``),
  on every engine.
- **A header timeout of its own**: from the first byte of a request head to its end, at
  most ``[gateway] header_timeout`` seconds (nginx's ``client_header_timeout``), then a
  408 and the connection is closed. Hypercorn's only timer is the keep-alive idle timer.
- **Hypercorn's own error responses** (400/431 for what h11 refuses) carry the gateway's
  JSON error body and a log line, not an empty body.
- **HTTP/2 with prior knowledge leaves the HTTP/1.1 head timer behind**: the preface is read
  as an HTTP/1.1 head (``PRI``) before the connection turns HTTP/2, and the timer it started
  fired ``header_timeout`` later, writing an HTTP/1.1 408 into the HTTP/2 stream. It is
  cancelled when the connection turns HTTP/2, which then has only its idle timeout.
- **HTTP/2 rapid reset**: streams opened and reset faster than Hypercorn's sender ends them
  fill its priority tree, which then raised ``TooManyStreamsError`` (a traceback, the
  connection dropped). The client gets GOAWAY ``ENHANCE_YOUR_CALM`` (what nginx and Envoy
  answer a rapid reset with, CVE-2023-44487) and one log line.
- **A CONTINUATION flood**: h2 buffers a header block's frames until ``END_HEADERS``, up to
  64 frames (4 MiB of 64 KiB frames). A header block is cut at ``[gateway]
  max_header_size`` bytes: GOAWAY ``PROTOCOL_ERROR`` and close, after at most one frame more.

Every private name used is checked before the worker serves (gateway/server/private_names.py),
so an upgrade of Hypercorn, h11 or h2 that moved one fails at start-up, loudly.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Final

from gateway.edge.errors import error_body
from gateway.edge.refusals import BAD_REQUEST, CLOSE, for_status, headers_for
from gateway.server.limits import ServerLimits

log = logging.getLogger("quartgate")

#: A request-target as RFC 9112 3.2 allows it on the wire: visible ASCII, no "#".
_TARGET: Final = re.compile(rb"[!-\"$-~]+")

#: The worker's limits, a value its reloads replace the contents of (gateway/server/limits.py).
_limits = ServerLimits()


def install(limits: ServerLimits) -> None:
    """Install the rules, reading ``limits`` from now on (once per process; the engine
    checked every name first: gateway/server/private_names.py)."""
    global _limits
    _limits = limits
    import h11._readers as readers
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream

    if getattr(H11Protocol, "_quartgate_guard", False):
        return
    setattr(readers, "_obsolete_line_fold", _refuse_obs_fold)  # noqa: B010 (a patch)
    _patch_h11_protocol(H11Protocol)
    _patch_http_stream(HTTPStream)
    _patch_h2_protocol(H2Protocol)
    setattr(H11Protocol, "_quartgate_guard", True)  # noqa: B010


def _refuse_obs_fold(lines: Iterable[bytes]) -> Iterable[bytes]:
    import h11

    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise h11.LocalProtocolError("obsolete line folding (obs-fold) in header")
        yield line


def _patch_h11_protocol(cls: Any) -> None:
    from hypercorn.events import Closed, RawData

    check_protocol = cls._check_protocol
    create_stream = cls._create_stream
    handle = cls.handle

    async def _check_protocol(self: Any, event: Any) -> None:
        if event.method == b"PRI":  # HTTP/2 with prior knowledge: Hypercorn's own path
            # The preface started the HTTP/1.1 head timer; the connection is HTTP/2 now.
            timer = getattr(self, "_quartgate_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._quartgate_header_timer = None
            self._quartgate_http2 = True
            await check_protocol(self, event)
        # Upgrade: h2c is never honoured; the request is served as HTTP/1.1.

    async def _send_error_response(self: Any, status_code: int) -> None:
        import h11

        if self.stream is not None:
            # Garbage after a complete request (a pipelined bad request, a byte after an
            # HTTP/1.0 request) while that request is still being answered: Hypercorn would
            # answer 400 in its place and close, losing a response whose request the upstream
            # already ran. Finish that response instead, then close (see ``guarded_send``).
            self._quartgate_close_after = True
            return

        refusal = for_status(status_code)
        body = error_body(refusal.code, refusal.detail, "")
        log.info(
            "client %s sent a request the HTTP parser refused: %d %s",
            self.client,
            refusal.status,
            refusal.code,
        )
        headers = [*headers_for(body), *self.config.response_headers("h11")]
        reason = HTTPStatus(refusal.status).phrase.encode("ascii")
        response = h11.Response(status_code=refusal.status, headers=headers, reason=reason)
        await self._send_h11_event(response)
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    async def _create_stream_timed(self: Any, request: Any) -> None:
        timer = getattr(self, "_quartgate_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._quartgate_header_timer = None
        await create_stream(self, request)

    def guard_send(self: Any) -> None:
        """Hold back the connection close Hypercorn sends after a parse error while a
        request is still being answered; the close follows once that stream ends."""
        send = self.send

        async def guarded_send(event: Any) -> None:
            if (
                isinstance(event, Closed)
                and self.stream is not None
                and getattr(self, "_quartgate_close_after", False)
            ):
                return
            await send(event)

        self.send = guarded_send
        self._quartgate_send_guarded = True

    async def handle_timed(self: Any, event: Any) -> None:
        if not getattr(self, "_quartgate_send_guarded", False):
            guard_send(self)
        if isinstance(event, RawData):
            timeout = _limits.header_timeout
            if (
                timeout
                and self.stream is None
                and event.data
                and getattr(self, "_quartgate_header_timer", None) is None
                and not getattr(self, "_quartgate_http2", False)
            ):
                loop = asyncio.get_running_loop()
                self._quartgate_header_timer = loop.call_later(timeout, _header_expired, self)
        elif isinstance(event, Closed):
            timer = getattr(self, "_quartgate_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._quartgate_header_timer = None
        await handle(self, event)

    def _header_expired(self: Any) -> None:
        self._quartgate_header_timer = None
        if self.stream is not None:
            return
        timeout = _limits.header_timeout
        log.info(
            "client %s did not send a complete request head within %g s; closing",
            self.client,
            timeout,
        )
        raw = _limits.head_timed_out

        async def expire() -> None:
            await self.send(RawData(data=raw))
            await self.send(Closed())

        self._quartgate_expiry = asyncio.ensure_future(expire())

    cls._check_protocol = _check_protocol
    cls._send_error_response = _send_error_response
    cls._create_stream = _create_stream_timed
    cls.handle = handle_timed


def _patch_http_stream(cls: Any) -> None:
    from hypercorn.protocol.events import Body, EndBody, Request, Response, StreamClosed

    handle = cls.handle

    async def handle_checked(self: Any, event: Any) -> None:
        if (
            isinstance(event, Request)
            and not self.closed
            and _TARGET.fullmatch(event.raw_path) is None
        ):
            # What h11 never lets through but an HTTP/2 :path can carry: answered here,
            # before Hypercorn decodes it (a non-ASCII byte raised and killed the connection).
            self.closed = True
            detail = (
                "fragment (#) in request target"
                if b"#" in event.raw_path
                else "invalid character in request target"
            )
            body = error_body(BAD_REQUEST.code, detail, "")
            log.info("client %s: %s; 400", self.client, detail)
            headers = headers_for(body)
            if event.http_version == "2":
                headers.remove(CLOSE)  # connection-specific: not in HTTP/2
            await self.send(
                Response(stream_id=self.stream_id, headers=headers, status_code=BAD_REQUEST.status)
            )
            await self.send(Body(stream_id=self.stream_id, data=body))
            await self.send(EndBody(stream_id=self.stream_id))
            await self.send(StreamClosed(stream_id=self.stream_id))  # as an ended app would
            return
        await handle(self, event)

    cls.handle = handle_checked


def _patch_h2_protocol(cls: Any) -> None:
    """Hypercorn's HTTP/2 protocol with rapid reset answered and header blocks bounded."""
    import h2.errors
    import h2.exceptions
    import priority.priority
    from h2.frame_buffer import FrameBuffer
    from hypercorn.events import Closed

    init = cls.__init__
    create_stream = cls._create_stream

    class BoundedFrameBuffer(FrameBuffer):
        """h2's frame buffer with a header block cut at ``max_header_size`` bytes."""

        def _update_header_buffer(self, f: Any) -> Any:
            block = self._headers_buffer
            if block:
                size = sum(len(frame.data) for frame in block) + len(getattr(f, "data", b""))
                limit = _limits.max_header_size
                if size > limit:
                    log.info(
                        "client sent an HTTP/2 header block over %d bytes "
                        "(CONTINUATION frames); GOAWAY and close",
                        limit,
                    )
                    raise h2.exceptions.ProtocolError(f"header block over {limit} bytes")
            return super()._update_header_buffer(f)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.connection.incoming_buffer.__class__ = BoundedFrameBuffer

    async def _create_stream(self: Any, request: Any) -> None:
        if getattr(self, "_quartgate_calm", False):
            return  # the connection is going away: no new stream
        try:
            await create_stream(self, request)
        except priority.priority.TooManyStreamsError:
            self._quartgate_calm = True
            self.streams.pop(request.stream_id, None)  # made before the priority tree said no
            self.stream_buffers.pop(request.stream_id, None)
            log.warning(
                "client %s opened and reset HTTP/2 streams faster than they end "
                "(rapid reset); GOAWAY ENHANCE_YOUR_CALM and close",
                self.client,
            )
            self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            await self._flush()
            await self.send(Closed())

    cls.__init__ = __init__
    cls._create_stream = _create_stream
