"""uvicorn's WebSocket protocol, as the gateway needs it (the uvicorn engine's ``ws``).

- Pongs under flow control: a client that pings and never reads cannot grow the worker.
- A compressed message inflates at most to its route's ``max_message_size``
  (:class:`BoundedInflation` around the websockets library's extension), then 1009.
- A protocol violation (invalid UTF-8 included) is one close frame and one log line, not
  a traceback per message.

The rules, the same on Hypercorn, are in gateway/websocket/limits.py.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig
from websockets.extensions.base import Extension as LibraryExtension
from websockets.extensions.permessage_deflate import PerMessageDeflate as LibraryDeflate
from websockets.frames import CTRL_OPCODES, Frame
from websockets.frames import Opcode as LibraryOpcode

from gateway.websocket.limits import (
    ACCEPT_MAX_MESSAGE_SIZE,
    INVALID_UTF8,
    SERVER_FAILED,
    inflated_too_big,
)

log = logging.getLogger("quartgate")


class InflatedTooBig(PayloadTooBig):
    """A compressed message inflated past the route's limit (1009, :func:`inflated_too_big`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(None, limit)
        self.limit = limit

    def __str__(self) -> str:
        return inflated_too_big(self.limit)


class BoundedInflation(LibraryExtension):
    """The websockets library's permessage-deflate, inflating a message to at most ``limit``.

    The library already bounds inflation, by its own ``max_size`` (uvicorn's 16 MiB
    ``ws_max_size``); this lowers the bound of a compressed message to the route's limit.
    """

    def __init__(self, inner: LibraryDeflate, limit: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.limit = limit
        self._inflated = 0  # bytes the current compressed message has inflated to so far

    def __repr__(self) -> str:
        return f"BoundedInflation({self.inner!r}, limit={self.limit})"

    def encode(self, frame: Frame) -> Frame:
        return self.inner.encode(frame)

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in CTRL_OPCODES:
            return self.inner.decode(frame, max_size=max_size)
        if frame.opcode is LibraryOpcode.CONT:
            compressed = self.inner.decode_cont_data
        else:
            compressed = frame.rsv1
        if not compressed:
            return self.inner.decode(frame, max_size=max_size)
        room = self.limit - self._inflated
        # Never 0: the library reads max_size 0 as "no limit".
        bound = max(1, room if max_size is None else min(room, max_size))
        try:
            decoded = self.inner.decode(frame, max_size=bound)
        except PayloadTooBig:
            if max_size is not None and max_size <= room:
                raise  # the library's own limit, with its own reason
            raise InflatedTooBig(self.limit) from None
        self._inflated += len(decoded.data)
        if self._inflated > self.limit:
            raise InflatedTooBig(self.limit)
        if frame.fin:
            self._inflated = 0
        return decoded


def bound_inflation(extensions: list[LibraryExtension], limit: int) -> None:
    """Bound the permessage-deflate of a websockets connection's ``extensions`` (in place:
    the parser reads the same list) to ``limit`` bytes a message."""
    for index, extension in enumerate(extensions):
        if isinstance(extension, LibraryDeflate):
            extensions[index] = BoundedInflation(extension, limit)
        elif isinstance(extension, BoundedInflation):
            extension.limit = limit


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with its pongs under flow control, inflation bounded by
    the route's limit and protocol violations answered in one log line.

    - uvicorn answers each ping with ``transport.write`` and never stops reading, so a
      client that sends pings and reads nothing grew a worker by ~190 MB in 15 s (found by
      an adversarial pass). Here, once the transport's write buffer is over its high-water
      mark after a pong, reading stops until the client has read (``resume_writing``).
    - A compressed message inflates at most to the route's ``max_message_size`` (from the
      gateway's ``websocket.accept``), then 1009; uvicorn's own bound is its 16 MiB
      ``ws_max_size`` (:class:`BoundedInflation`).
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
