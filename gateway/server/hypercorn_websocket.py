"""Hypercorn 0.18's WebSocket stream, corrected where a proxy needs it (the Hypercorn engine).

What ``WSStream`` does wrong, and what :func:`install` makes it do instead (process-wide,
idempotent, inert under other engines, which never use ``WSStream``):

- **The client's close code is lost**: when a client sends a close frame, Hypercorn answers
  it and ends the stream, and the app is told ``websocket.disconnect`` with 1006
  (``WSStream.handle`` on ``StreamClosed`` knows only whether the *app* closed). A proxy
  must pass the client's code on: the code and reason of the client's close frame are
  noted and reported to the app in place of 1006.
- **Protocol violations are dropped without a close frame**: an unmasked frame, a reserved
  opcode, a text message that is not UTF-8 (wsproto reports them as a close event while
  the connection is still open) ended the TCP connection silently. Here the connection is
  failed as RFC 6455 7.1.7 says and as uvicorn does: a close frame with 1002 (protocol
  error), 1007 (invalid UTF-8) or 1009 (too big), one log line, the app told (with
  ``SERVER_FAILED``), then the connection closed.
- **Inflation is unbounded**: wsproto inflates a permessage-deflate frame with no limit
  (a 100 KB frame became 100 MiB of worker memory). The stream's extension is
  :class:`BoundedPerMessageDeflate`, bounded by the
  route's ``max_message_size`` (from the gateway's ``websocket.accept``).
- **A message over Hypercorn's own cap** (``websocket_max_message_size``) was answered
  with a close frame but the app never told, and the partial message kept growing with
  what the client sent on: the connection is failed as above (1009).
- **Bytes before the 101** (a body, frames sent with the handshake): Hypercorn answers 400
  and marks the stream closed but never tells the app, which would keep its upstream
  session open until the idle timeout. It is told.

tests/test_websocket_proxy.py proves the client's code arrives; tests/test_websocket_hostile.py
and tests/test_websocket_bombs.py the close frames and the bounded inflation.
"""

from __future__ import annotations

import logging
import zlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from gateway.websocket.limits import (
    ACCEPT_MAX_MESSAGE_SIZE,
    DEFAULT_LIMIT,
    INVALID_UTF8,
    SERVER_FAILED,
    inflated_too_big,
    truncate,
)

log = logging.getLogger("quartgate")

#: Four bytes that end every compressed message (RFC 7692 7.2.2), added back to inflate.
_TAIL: Final = b"\x00\x00\xff\xff"


@dataclass(slots=True)
class Inflation:
    """One connection's inflation limit, and why inflating failed (the close reason)."""

    limit: int
    failure: str | None = None


#: Set while Hypercorn accepts a session: the :class:`Inflation` of the extension that
#: its handshake creates (``Handshake.accept`` builds it with no arguments).
ACCEPTING: ContextVar[Inflation | None] = ContextVar("quartgate_accepting", default=None)


class BoundedPerMessageDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate with inflation bounded by the connection's limit.

    wsproto inflates each piece of a frame with no bound (``decompress(data)``): here it is
    ``decompress(data, room + 1)``, so a piece never inflates past the room left in the
    message, and a message over the limit fails with 1009 before the next piece is read.
    A control frame between the fragments of a compressed message leaves the message's
    state alone (wsproto's resets it, and the rest of the message was passed on still
    compressed, the next message then failing to inflate).
    """

    def __init__(
        self,
        client_no_context_takeover: bool = False,
        client_max_window_bits: int | None = None,
        server_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
    ) -> None:
        super().__init__(
            client_no_context_takeover,
            client_max_window_bits,
            server_no_context_takeover,
            server_max_window_bits,
        )
        self.inflation = ACCEPTING.get() or Inflation(DEFAULT_LIMIT)
        self._inflated = 0  # bytes the current message has inflated to so far

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False  # this frame only; the message's stays
            return RsvBits(False, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin or not self._inbound_is_compressible:
            return None  # a fragment, or a control frame (inside or between messages)
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        tail = self._inflate(_TAIL)
        if isinstance(tail, CloseReason):
            return tail
        decompressor = self._decompressor
        assert decompressor is not None
        # Nothing is left unconsumed (_inflate would have failed): what zlib still holds.
        rest = decompressor.flush()
        if rest:
            self._inflated += len(rest)
            if self._inflated > self.inflation.limit:
                return self._too_big()
        self._inflated = 0
        no_context_takeover = (
            self.server_no_context_takeover if proto.client else self.client_no_context_takeover
        )
        if no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        return tail + rest

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        decompressor = self._decompressor
        assert decompressor is not None
        room = self.inflation.limit - self._inflated
        try:
            # At most room + 1 bytes (never 0: zlib reads 0 as "no limit").
            inflated = decompressor.decompress(data, room + 1)
        except zlib.error:
            self.inflation.failure = "invalid compressed data"
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(inflated) > room:
            return self._too_big()
        self._inflated += len(inflated)
        return inflated

    def _too_big(self) -> CloseReason:
        self.inflation.failure = inflated_too_big(self.inflation.limit)
        return CloseReason.MESSAGE_TOO_BIG


def install() -> None:
    from hypercorn.protocol import ws_stream
    from hypercorn.protocol.events import Body, Data, StreamClosed
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection, Message, Ping
    from wsproto.extensions import PerMessageDeflate

    stream_class: Any = ws_stream.WSStream
    if getattr(stream_class, "_quartgate_close", False):
        return
    if getattr(ws_stream, "PerMessageDeflate", None) is not PerMessageDeflate:
        # Fail at start-up, loudly, rather than serve with inflation unbounded.
        raise RuntimeError("Hypercorn's WSStream no longer builds wsproto's PerMessageDeflate")
    handle = stream_class.handle
    accept = stream_class._accept
    too_large = ws_stream.FrameTooLargeError
    connected = ws_stream.ASGIWebsocketState.CONNECTED
    # Handshake.accept builds the extension by this module-level name, on each accept.
    setattr(ws_stream, "PerMessageDeflate", BoundedPerMessageDeflate)  # noqa: B010 (a patch)

    async def _accept(self: Any, message: Any) -> None:
        cap = int(self.config.websocket_max_message_size)
        limit = int(message.get(ACCEPT_MAX_MESSAGE_SIZE) or cap)
        inflation = Inflation(min(limit, cap))
        self._quartgate_inflation = inflation
        token = ACCEPTING.set(inflation)
        try:
            await accept(self, message)
        finally:
            ACCEPTING.reset(token)

    async def _fail(self: Any, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame, then TCP closed."""
        inflation: Inflation | None = getattr(self, "_quartgate_inflation", None)
        if inflation is not None and inflation.failure is not None:
            reason = inflation.failure  # wsproto says only "error in extension"
        elif code == 1007:
            reason = INVALID_UTF8
        reason = truncate(reason)
        log.info("client %s: WebSocket closed with %d: %s", self.client, code, reason)
        self._quartgate_close_frame = (code, reason)
        self._quartgate_failed = True
        await self._send_wsproto_event(CloseConnection(code=code, reason=reason))
        await self.send(StreamClosed(stream_id=self.stream_id))

    async def _handle_events(self: Any) -> None:
        connection = self.connection
        for event in connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except too_large:
                    await _fail(self, 1009, f"message over {self.buffer.max_length} bytes")
                    return
                if event.message_finished:
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                if connection.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
                    # No close frame moved the state on: wsproto's parser failed.
                    await _fail(self, int(event.code), event.reason or "")
                    return
                self._quartgate_close_frame = (int(event.code), event.reason or "")
                if connection.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))
                return

    async def _handle(self: Any, event: Any) -> None:
        if (
            isinstance(event, Body | Data)
            and not self.closed
            and self.app_put is not None
            and not self.handshake.accepted
        ):
            # Bytes before the 101: Hypercorn answers 400 and closes the stream; the app is
            # told, or its upstream session would stay open until the idle timeout.
            await handle(self, event)
            await self.app_put({"type": "websocket.disconnect", "code": 1006, "reason": ""})
            return
        frame = getattr(self, "_quartgate_close_frame", None)
        if (
            frame is not None
            and isinstance(event, StreamClosed)
            and not self.closed
            and self.app_put is not None
            and self.state == connected
        ):
            self.closed = True
            code, reason = frame
            message = {"type": "websocket.disconnect", "code": code, "reason": reason}
            if getattr(self, "_quartgate_failed", False):
                message[SERVER_FAILED] = True
            await self.app_put(message)
            return
        await handle(self, event)

    stream_class._accept = _accept
    stream_class._handle_events = _handle_events
    stream_class.handle = _handle
    stream_class._quartgate_close = True
