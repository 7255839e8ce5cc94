"""One proxied session: messages both ways until a side closes, then the other is closed.

Backpressure both ways comes from awaiting each send before the next receive: a message
from the client is read only once the previous one is written to the upstream connection
(``websockets`` awaits its write buffer, ``write_limit``), and a message from the upstream
only once the previous one is written to the client (the server awaits its transport).
What is buffered per session is therefore bounded by the server's queue on the client side
(Hypercorn: ``max_app_queue_size`` messages; uvicorn: one message) and ``MAX_QUEUE``
frames on the upstream side, each at most ``max_message_size``.

Close codes (docs/websocket.md has the table): a side's close code and reason go to the
other side as they are; codes that must not be sent on the wire are replaced (1005 "no
status" becomes 1000; a side that vanished without a close, 1006, becomes 1001 towards the
upstream and 1011 towards the client). The gateway's own closes: 1009 for a message over
``max_message_size``, 1001 for ``idle_timeout`` and for a drain (SIGTERM), and the code of
a client's protocol violation, which the server closed (``SERVER_FAILED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import perf_counter
from typing import Final

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from gateway.asgi_types import Message, Receive, Send
from gateway.edge.context import RequestContext
from gateway.websocket.limits import SERVER_FAILED, WebSocketSettings, truncate
from upstreams.target import Target

log = logging.getLogger("quartgate")

NORMAL: Final = 1000
GOING_AWAY: Final = 1001
NO_STATUS: Final = 1005
ABNORMAL: Final = 1006
TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
#: Codes that are never sent in a close frame (RFC 6455 7.4.1).
LOCAL_ONLY: Final = frozenset({NO_STATUS, ABNORMAL, 1015})
#: Time a close towards the client gets before the session's task ends regardless.
CLOSE_GRACE: Final = 5.0


class Close:
    """How a session ended: the codes sent (or seen) on each side, and who started it."""

    __slots__ = ("by", "client_closed", "client_code", "reason", "upstream_code")

    def __init__(
        self,
        by: str,
        client_code: int,
        upstream_code: int,
        reason: str = "",
        *,
        client_closed: bool = False,
    ) -> None:
        #: "client", "upstream" or "gateway" (too big, idle, drain, error, a violation).
        self.by = by
        self.client_code = client_code
        self.upstream_code = upstream_code
        self.reason = reason
        #: The client side is closed already: the server failed the connection (a
        #: protocol violation, a message too big) and sent its close frame itself.
        self.client_closed = client_closed


class Session:
    """A client's accepted session joined to its upstream connection."""

    __slots__ = (
        "_activity",
        "_done",
        "_going_away",
        "_receive",
        "_send",
        "bytes_in",
        "bytes_out",
        "close",
        "ctx",
        "messages_in",
        "messages_out",
        "opened",
        "settings",
        "target",
        "upstream",
    )

    def __init__(
        self,
        ctx: RequestContext,
        settings: WebSocketSettings,
        upstream: ClientConnection,
        receive: Receive,
        send: Send,
        target: Target | None = None,
    ) -> None:
        self.ctx = ctx
        #: The upstream target; the session counts as outstanding on it while open, so
        #: ``balancer = "least_outstanding"`` spreads sessions as nginx's least_conn does.
        self.target = target
        self.settings = settings
        self.upstream = upstream
        self._receive = receive
        self._send = send
        self.opened = perf_counter()
        self._activity = self.opened
        #: Client to upstream ("in") and upstream to client ("out"): messages and bytes.
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.close: Close | None = None
        self._going_away: asyncio.Future[Close] | None = None
        self._done = False

    # ---- the session ---------------------------------------------------------------------

    async def run(self) -> Close:
        loop = asyncio.get_running_loop()
        self._going_away = loop.create_future()
        pumps = [
            asyncio.ensure_future(self._from_client()),
            asyncio.ensure_future(self._from_upstream()),
            self._going_away,
        ]
        if self.settings.idle_timeout:
            pumps.append(asyncio.ensure_future(self._idle()))
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done))
            close = first.result()
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        self.close = close
        await self._finish(close)
        return close

    def go_away(self, reason: str = "server shutting down") -> None:
        """A drain: both sides get 1001 (Going Away)."""
        waiter = self._going_away
        if waiter is not None and not waiter.done():
            waiter.set_result(Close("gateway", GOING_AWAY, GOING_AWAY, reason))

    async def _from_client(self) -> Close:
        receive = self._receive
        upstream = self.upstream
        limit = self.settings.max_message_size
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text: str | None = message.get("text")
                data: str | bytes
                if text is None:
                    data = message.get("bytes") or b""
                    size = len(data)
                else:
                    data = text
                    size = len(text)
                    if size * 4 > limit:  # UTF-8 takes 1 to 4 bytes a character
                        size = len(text.encode("utf-8"))
                if size > limit:
                    reason = f"message of {size} bytes over {limit}"
                    return Close("gateway", TOO_BIG, TOO_BIG, reason)
                self._activity = perf_counter()
                self.messages_in += 1
                self.bytes_in += size
                try:
                    await upstream.send(data)
                except ConnectionClosed:
                    return self._upstream_closed()
            elif kind == "websocket.disconnect":
                code = int(message.get("code") or ABNORMAL)
                # A lost connection: 1006 (Hypercorn) or 1005 (uvicorn), and no "reason"
                # key, which both engines send with a close frame the client sent.
                if code == ABNORMAL or (code == NO_STATUS and "reason" not in message):
                    return Close("client", ABNORMAL, GOING_AWAY, "client went away")
                reason = message.get("reason") or ""
                if message.get(SERVER_FAILED):
                    # The server failed the connection (gateway/websocket/limits.py):
                    # the upstream gets the code and reason the client got.
                    return Close("gateway", code, code, reason, client_closed=True)
                return Close("client", code, NORMAL if code in LOCAL_ONLY else code, reason)

    async def _from_upstream(self) -> Close:
        upstream = self.upstream
        send = self._send
        while True:
            try:
                data = await upstream.recv()
            except ConnectionClosed:
                return self._upstream_closed()
            self._activity = perf_counter()
            self.messages_out += 1
            self.bytes_out += len(data)
            message: Message = (
                {"type": "websocket.send", "text": data}
                if isinstance(data, str)
                else {"type": "websocket.send", "bytes": data}
            )
            try:
                await send(message)
            except OSError:  # uvicorn's ClientDisconnected: the client is gone
                return Close("client", ABNORMAL, GOING_AWAY, "client went away")

    def _upstream_closed(self) -> Close:
        """The upstream connection is closed: what the client is told."""
        protocol = self.upstream.protocol
        sent, received = protocol.close_sent, protocol.close_rcvd
        if sent is not None and protocol.close_rcvd_then_sent is not True:
            # The library closed it: a message over max_size (1009), a ping timeout or a
            # protocol error of the upstream (1011 to the client: not the client's fault).
            code = TOO_BIG if sent.code == TOO_BIG else INTERNAL_ERROR
            return Close("gateway", code, sent.code, sent.reason or "upstream failed")
        if received is None:
            return Close("upstream", INTERNAL_ERROR, ABNORMAL, "upstream connection lost")
        code = NORMAL if received.code in LOCAL_ONLY else received.code
        return Close("upstream", code, received.code, received.reason)

    async def _idle(self) -> Close:
        timeout = self.settings.idle_timeout
        while True:
            left = self._activity + timeout - perf_counter()
            if left <= 0:
                return Close("gateway", GOING_AWAY, GOING_AWAY, "idle timeout")
            await asyncio.sleep(left)

    # ---- closing ---------------------------------------------------------------------------

    async def _finish(self, close: Close) -> None:
        """Close whichever side did not close itself."""
        tasks = []
        if close.by != "client" and not close.client_closed:
            tasks.append(self._close_client(close.client_code, close.reason))
        if close.by != "upstream" or self.upstream.protocol.close_sent is None:
            tasks.append(self._close_upstream(close.upstream_code, close.reason))
        await asyncio.gather(*tasks)

    async def _close_client(self, code: int, reason: str) -> None:
        if code in LOCAL_ONLY:
            code = INTERNAL_ERROR if code == ABNORMAL else NORMAL
        with contextlib.suppress(OSError):
            async with asyncio.timeout(CLOSE_GRACE):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _close_upstream(self, code: int, reason: str) -> None:
        if code in LOCAL_ONLY:
            code = GOING_AWAY
        # close() waits for the upstream's answer up to close_timeout, then drops the TCP
        # connection; it never raises for a connection that is already closed.
        await self.upstream.close(code, truncate(reason))

    def elapsed(self) -> float:
        return perf_counter() - self.opened
