"""Hypercorn 0.18 loses a client's WebSocket close code: the fix, installed by create_app.

When a client sends a close frame, Hypercorn answers it and ends the stream, and the app
is told ``websocket.disconnect`` with code 1006 (abnormal closure) instead of the client's
code and reason (``WSStream.handle`` on ``StreamClosed`` knows only whether the *app*
closed). A proxy must pass the client's code on, so :func:`install` wraps two methods of
``WSStream``: ``_handle_events`` notes the code and reason of a close frame from the client
(the events are replayed to Hypercorn's own code unchanged, in order), and ``handle`` on
``StreamClosed`` reports them to the app in place of 1006. Process-wide, idempotent, inert
under other engines (they never use ``WSStream``). tests/test_websocket_proxy.py proves
the client's code arrives.
"""

from __future__ import annotations

from typing import Any, Final

#: The Hypercorn minor version the wrapped methods were read from (pyproject pins <0.19).
WRITTEN_FOR: Final = "0.18"


def install() -> None:
    from hypercorn.protocol import ws_stream
    from hypercorn.protocol.events import Body, Data, StreamClosed
    from wsproto.events import CloseConnection

    stream_class: Any = ws_stream.WSStream
    if getattr(stream_class, "_quartgate_close", False):
        return
    missing = [
        name
        for name in ("WSStream._handle_events", "WSStream.handle", "ASGIWebsocketState")
        if not hasattr(stream_class if "." in name else ws_stream, name.rpartition(".")[2])
    ]
    if missing:
        # Fail at start-up, loudly, rather than serve with close codes silently lost.
        raise RuntimeError(
            f"Hypercorn's WSStream changed (written for {WRITTEN_FOR}): {', '.join(missing)}"
        )
    handle_events = stream_class._handle_events
    handle = stream_class.handle
    connected = ws_stream.ASGIWebsocketState.CONNECTED

    async def _handle_events(self: Any) -> None:
        connection = self.connection
        events = list(connection.events())
        for event in events:
            if isinstance(event, CloseConnection):
                self._quartgate_close_frame = (int(event.code), event.reason or "")
        connection.events = lambda: iter(events)
        try:
            await handle_events(self)
        finally:
            del connection.events  # the class's method again

    async def _handle(self: Any, event: Any) -> None:
        if (
            isinstance(event, Body | Data)
            and not self.closed
            and self.app_put is not None
            and not self.handshake.accepted
        ):
            # Bytes before the 101 (a body, frames sent with the handshake): Hypercorn answers
            # 400 and marks the stream closed but never tells the app, which would keep its
            # upstream session open until the idle timeout. Tell it.
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
            await self.app_put({"type": "websocket.disconnect", "code": code, "reason": reason})
            return
        await handle(self, event)

    stream_class._handle_events = _handle_events
    stream_class.handle = _handle
    stream_class._quartgate_close = True
