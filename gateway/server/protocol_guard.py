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

Every private name used is listed in :data:`PRIVATE_NAMES` and checked by :func:`install`,
which fails loudly if one is gone (an upgrade of Hypercorn or h11 moved it).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from collections.abc import Iterable
from typing import Any, Final

from gateway.edge.errors import error_body

log = logging.getLogger("quartgate")

PRIVATE_NAMES: Final = (
    ("h11._readers", "_obsolete_line_fold"),
    ("h11._readers", "_decode_header_lines"),
    ("hypercorn.protocol.h11", "H11Protocol._check_protocol"),
    ("hypercorn.protocol.h11", "H11Protocol._send_error_response"),
    ("hypercorn.protocol.h11", "H11Protocol._create_stream"),
    ("hypercorn.protocol.h11", "H11Protocol.handle"),
    ("hypercorn.protocol.h11", "H11Protocol._send_h11_event"),
    ("hypercorn.protocol.http_stream", "HTTPStream.handle"),
    ("hypercorn.protocol.events", "Request"),
    ("hypercorn.protocol.events", "Response"),
    ("hypercorn.protocol.events", "Body"),
    ("hypercorn.protocol.events", "EndBody"),
    ("hypercorn.protocol.events", "StreamClosed"),
    ("hypercorn.events", "RawData"),
    ("hypercorn.events", "Closed"),
    ("hypercorn.protocol.h2", "H2Protocol.__init__"),
    ("hypercorn.protocol.h2", "H2Protocol._create_stream"),
    ("hypercorn.protocol.h2", "H2Protocol._flush"),
    ("hypercorn.protocol.h2", "H2Protocol.stream_buffers"),
    ("h2.frame_buffer", "FrameBuffer._update_header_buffer"),
    ("h2.frame_buffer", "FrameBuffer._headers_buffer"),
    ("priority.priority", "TooManyStreamsError"),
)

#: A request-target as RFC 9112 3.2 allows it on the wire: visible ASCII, no "#".
_TARGET: Final = re.compile(rb"[!-\"$-~]+")

_settings: dict[str, float] = {"header_timeout": 30.0, "max_header_size": 16384}


class ProtocolGuardUnavailable(RuntimeError):
    """h11 or Hypercorn no longer has a name these rules rely on."""


def install(header_timeout: float, max_header_size: int = 16384) -> None:
    """Check the names, then install the rules (once per process; the limits are updated)."""
    _settings["header_timeout"] = header_timeout
    _settings["max_header_size"] = max_header_size
    missing = [f"{m}.{n}" for m, n in PRIVATE_NAMES if not _has(m, n)]
    if missing:
        raise ProtocolGuardUnavailable(
            "quartgate's HTTP/1.1 protections need names that are gone from this Hypercorn/h11: "
            + ", ".join(missing)
        )
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


def _has(module_name: str, dotted: str) -> bool:
    from gateway.server.hypercorn_patches import has_name

    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    return has_name(module, dotted)


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

        code, detail = _HYPERCORN_ERRORS.get(
            status_code, ("bad_request", "malformed HTTP/1.1 request")
        )
        body = error_body(code, detail, "")
        log.info(
            "client %s sent a request the HTTP parser refused: %d %s",
            self.client,
            status_code,
            code,
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
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
            timeout = _settings["header_timeout"]
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
        timeout = _settings["header_timeout"]
        log.info(
            "client %s did not send a complete request head within %g s; closing",
            self.client,
            timeout,
        )
        body = error_body(
            "request_header_timeout", f"no complete request head within {timeout:g} s", ""
        )
        raw = (
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body)
        )

        async def expire() -> None:
            await self.send(RawData(data=raw))
            await self.send(Closed())

        self._quartgate_expiry = asyncio.ensure_future(expire())

    cls._check_protocol = _check_protocol
    cls._send_error_response = _send_error_response
    cls._create_stream = _create_stream_timed
    cls.handle = handle_timed


_HYPERCORN_ERRORS: Final = {
    400: ("bad_request", "malformed HTTP/1.1 request (refused by the HTTP parser)"),
    431: ("headers_too_large", "request head too large"),
    501: ("not_implemented", "transfer coding not implemented (only chunked is)"),
}


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
            body = error_body("bad_request", detail, "")
            log.info("client %s: %s; 400", self.client, detail)
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            if event.http_version != "2":
                headers.append((b"connection", b"close"))
            await self.send(Response(stream_id=self.stream_id, headers=headers, status_code=400))
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
                limit = int(_settings["max_header_size"])
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
