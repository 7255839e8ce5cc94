"""Hypercorn 0.18's WebSocket stream, corrected where a proxy needs it; installed by create_app.

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
  :class:`~gateway.websocket.client_limits.BoundedPerMessageDeflate`, bounded by the
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
from typing import Any, Final

from gateway.websocket.client_limits import (
    ACCEPT_MAX_MESSAGE_SIZE,
    ACCEPTING,
    INVALID_UTF8,
    SERVER_FAILED,
    BoundedPerMessageDeflate,
    Inflation,
    truncate,
    wsproto_state_missing,
)

log = logging.getLogger("quartgate")

#: The Hypercorn minor version the wrapped methods were read from (pyproject pins <0.19).
WRITTEN_FOR: Final = "0.18"
#: What this module uses of ``hypercorn.protocol.ws_stream`` (checked at install).
NAMES: Final = (
    "WSStream._handle_events",
    "WSStream.handle",
    "WSStream._accept",
    "WSStream._send_wsproto_event",
    "ASGIWebsocketState",
    "FrameTooLargeError",
    "PerMessageDeflate",
)


def install() -> None:
    from hypercorn.protocol import ws_stream
    from hypercorn.protocol.events import Body, Data, StreamClosed
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection, Message, Ping
    from wsproto.extensions import PerMessageDeflate

    stream_class: Any = ws_stream.WSStream
    if getattr(stream_class, "_quartgate_close", False):
        return
    missing = [name for name in NAMES if not _has(ws_stream, name)]
    if getattr(ws_stream, "PerMessageDeflate", None) is not PerMessageDeflate:
        missing.append("PerMessageDeflate (wsproto's)")
    missing += wsproto_state_missing()
    if missing:
        # Fail at start-up, loudly, rather than serve with these holes silently open.
        raise RuntimeError(
            f"Hypercorn's WSStream changed (written for {WRITTEN_FOR}): {', '.join(missing)}"
        )
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


def _has(module: Any, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True
