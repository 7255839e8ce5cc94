"""A small upstream that tests can break on purpose: kill it, restart it on the same port,
slow it down, make it reset mid-body, answer a chosen status, or fail its health checks.

It runs its own event loop in a thread, like ``tests/support/upstream.py``; each instance
answers with ``x-served-by: NAME`` so a test sees which target served a request.

  GET /health         ``health_status`` (200 unless a test changes it)
  anything else       by ``mode``: "ok" (200, JSON), "status" (``status``), "slow" (waits
                      ``delay`` s, then 200), "reset" (closes before the head),
                      "reset_mid_body" (head + part of the body, then a TCP reset)
  ?delay=S            on any path: wait S seconds before answering
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from urllib.parse import parse_qs, urlsplit


class FaultyUpstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.status = 503
        self.delay = 0.0
        self.health_status = 200
        self.port = 0
        #: Paths of requests received (health checks excluded), in order.
        self.requests: list[str] = []
        self.health_checks = 0
        self.open_connections = 0
        #: Set when a request starts waiting (slow mode or ?delay=).
        self.waiting = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: object, timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> FaultyUpstream:
        """Listen (again, on the same port after a kill)."""
        self._call(self._start())
        return self

    def kill(self) -> None:
        """Stop listening and cut every open connection, as a crashed process would."""
        self._call(self._kill())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def served(self) -> int:
        return len(self.requests)

    # ---- server ------------------------------------------------------------------------------

    async def _start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def _kill(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.open_connections += 1
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        url = urlsplit(target)
        if url.path == "/health":
            self.health_checks += 1
            self._write(writer, self.health_status, b"")
            return True
        self.requests.append(url.path)
        delay = float(parse_qs(url.query).get("delay", ["0"])[0]) or (
            self.delay if self.mode == "slow" else 0.0
        )
        if delay:
            self.waiting.set()
            await asyncio.sleep(delay)
        mode = self.mode
        if mode == "reset":
            writer.transport.abort()
            return False
        if mode == "reset_mid_body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.transport.abort()
            return False
        if mode == "status":
            self._write(writer, self.status, b'{"error": "from upstream"}')
            return True
        body = json.dumps({"served_by": self.name, "method": method, "path": url.path}).encode()
        self._write(writer, 200, body)
        return True

    def _write(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-served-by: %b\r\n\r\n%b" % (status, len(body), self.name.encode(), body)
        )
