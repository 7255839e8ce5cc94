"""A real WebSocket upstream (the ``websockets`` library's server) for end-to-end tests.

It runs its own event loop in a background thread, as tests/support/upstream.py does.
Its behaviour is chosen by the path (the last segment, so ``/ws/echo`` is ``/echo``):

  /echo           echoes every message, text as text and binary as binary
  /headers        sends the handshake's request headers (JSON) and the subprotocol, then echoes
  /close          on the first message "CODE REASON", closes with that code and reason
  /die            on the first message, drops the TCP connection without a close frame
  /fragments      on the first message "N", sends one text message in N fragments
  /big            on each message "N", sends a binary message of N bytes
  /ping           pings the client and sends "pong N" with the round trip count
  /slow           reads nothing until ``release`` is set, then answers each message with its
                  length (8 bytes); backpressure tests
  /flood          on the first message "N", sends N binary messages of 64 KiB (message i
                  is i as 4 bytes, repeated) as fast as the connection takes them
  /mute           stops reading after the handshake (so never answers a ping)
  /refuse/N       refuses the handshake with HTTP status N and a short body

Every connection's end is put on ``closed`` as (path, code, reason) where code is the close
code the server received (1006 when the connection dropped): tests ``get`` it with a
timeout, never sleep.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol


@dataclass
class WebSocketUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    max_size: int = 64 * 1024 * 1024
    closed: queue.Queue[tuple[str, int, str]] = field(default_factory=queue.Queue)
    opened: queue.Queue[str] = field(default_factory=queue.Queue)
    #: Bytes the /slow handler has been allowed to read, set from the test's thread.
    release: threading.Event = field(default_factory=threading.Event)
    connections: int = 0
    _ends: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    #: Messages /flood has handed to its connection so far.
    flood_sent: int = 0

    def start(self) -> WebSocketUpstream:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("WebSocket upstream did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def next_close(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """The close code and reason of the next connection to ``path`` that ends (others'
        ends are kept for their own call), waited for in a thread so the test's loop runs."""

        def wait() -> tuple[int, str]:
            deadline = time.monotonic() + timeout
            while not self._ends.get(path):
                seen, code, reason = self.closed.get(timeout=max(0.0, deadline - time.monotonic()))
                self._ends.setdefault(seen, []).append((code, reason))
            return self._ends[path].pop(0)

        return await asyncio.to_thread(wait)

    async def flood_stalled(self, timeout: float = 20.0) -> int:
        """Wait until /flood has sent nothing new for 0.5 s; how many it had sent."""
        async with asyncio.timeout(timeout):
            last, since = -1, 0.0
            loop = asyncio.get_running_loop()
            while True:
                if self.flood_sent != last:
                    last, since = self.flood_sent, loop.time()
                elif last > 0 and loop.time() - since >= 0.5:
                    return last
                await asyncio.sleep(0.05)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(ready))
        finally:
            self._loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        async with serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.max_size,
            compression=None,
            ping_interval=None,
            close_timeout=1,  # /mute never answers a close: the server's stop waits this long
            select_subprotocol=_first_offered,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await self._stop.wait()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = request.path.split("?")[0].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "refuse":
            status = HTTPStatus(int(parts[-1]))
            body = f"refused with {status.value}".encode()
            headers = Headers([("Content-Type", "text/plain"), ("X-Refused", "yes")])
            headers["Content-Length"] = str(len(body))
            return Response(status.value, status.phrase, headers, body)
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        assert connection.request is not None
        path = connection.request.path.split("?")[0]
        kind = "/" + path.rstrip("/").rsplit("/", 1)[-1]
        self.opened.put(path)
        try:
            await self._behave(kind, connection)
        except ConnectionClosed:
            pass
        finally:
            await connection.wait_closed()
            received = connection.protocol.close_rcvd
            code = received.code if received is not None else 1006
            self.closed.put((path, code, received.reason if received is not None else ""))

    async def _behave(self, kind: str, connection: ServerConnection) -> None:
        if kind == "/headers":
            assert connection.request is not None
            headers = [[n.lower(), v] for n, v in connection.request.headers.raw_items()]
            await connection.send(
                json.dumps({"headers": headers, "subprotocol": connection.subprotocol})
            )
            kind = "/echo"
        if kind == "/echo":
            async for message in connection:
                await connection.send(message)
        elif kind == "/close":
            text = str(await connection.recv())
            code, _, reason = text.partition(" ")
            await connection.close(int(code), reason)
        elif kind == "/die":
            await connection.recv()
            connection.transport.abort()
        elif kind == "/fragments":
            count = int(await connection.recv())
            await connection.send([f"part{i}-" for i in range(count)])
            async for message in connection:
                await connection.send(message)
        elif kind == "/big":
            async for message in connection:
                await connection.send(b"x" * int(message))
        elif kind == "/ping":
            await connection.recv()
            waiter = await connection.ping(b"are you there")
            latency = await asyncio.wait_for(waiter, 5)
            await connection.send(f"pong {latency >= 0}")
            async for message in connection:
                await connection.send(message)
        elif kind == "/mute":
            connection.transport.pause_reading()
            await connection.wait_closed()
        elif kind == "/flood":
            self.flood_sent = 0
            count = int(await connection.recv())
            for i in range(count):
                await connection.send(i.to_bytes(4) * (64 * 1024 // 4))
                self.flood_sent = i + 1
            async for _ in connection:
                pass
        elif kind == "/slow":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.release.wait, 30)
            async for message in connection:
                await connection.send(len(message).to_bytes(8))
        else:
            await connection.close(4404, f"no behaviour {kind}")


def _first_offered(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    return offered[0] if offered else None
