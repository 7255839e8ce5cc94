"""A real, controllable HTTP/1.1 upstream for end-to-end tests.

It runs its own event loop in a background thread, so one instance serves every test in the
session whatever loop each test uses. Its behaviour is chosen by the last path segment
(``/api/v1/hang`` is ``/hang``):

  /echo...            JSON: method, target, headers, body length and sha256
  /stream/N           N bytes (pattern), 64 KiB writes; ?chunked=1 for chunked framing;
                      ?delay=S pauses S seconds after the first piece
  /slow?delay=S       waits S seconds before the head
  /reset-mid-body     head with Content-Length 100000, 1000 bytes, then a TCP reset
  /close-before-head  closes the connection without answering
  /hang               never answers; records when the gateway gives up on it
  /cookies            three Set-Cookie headers
  /status/N           an empty response with status N
  anything else       same as /echo

Everything it receives is recorded in ``requests``; ``hang_started`` and ``hang_closed``
are threading events tests can wait on instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 256  # 64 KiB


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_length: int
    body_sha256: str


@dataclass
class UpstreamServer:
    host: str = "127.0.0.1"
    port: int = 0
    #: A bound socket to serve (tests/support/gateway.py's ``bound_socket``) instead of
    #: ``host:port``: its port was held, refusing connections, until this server listens.
    sock: socket.socket | None = None
    requests: list[Received] = field(default_factory=list)
    hang_started: threading.Event = field(default_factory=threading.Event)
    hang_closed: threading.Event = field(default_factory=threading.Event)
    #: Set whenever a request head has arrived (before its body is read).
    head_arrived: threading.Event = field(default_factory=threading.Event)
    connections: int = 0
    #: How many /stream responses were sent to their last byte.
    streams_done: int = 0

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("test upstream did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        self.requests.clear()
        self.hang_started.clear()
        self.hang_closed.clear()

    def last(self) -> Received:
        return self.requests[-1]

    # ---- server --------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(ready))
        self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        if self.sock is not None:
            server = await asyncio.start_server(self._handle, sock=self.sock)
        else:
            server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self._writers: set[asyncio.StreamWriter] = set()
        async with server:
            await self._stop.wait()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                keep = await self._one(head, reader, writer)
                if not keep:
                    return
        except ConnectionError:
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        found = dict(headers)
        self.head_arrived.set()
        digest = hashlib.sha256()
        length = 0
        if found.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                piece = await reader.readexactly(size)
                digest.update(piece)
                length += size
                await reader.readexactly(2)
        elif "content-length" in found:
            remaining = int(found["content-length"])
            while remaining:
                piece = await reader.read(min(remaining, 1 << 16))
                if not piece:
                    raise ConnectionError
                digest.update(piece)
                length += len(piece)
                remaining -= len(piece)
        received = Received(method, target, headers, length, digest.hexdigest())
        self.requests.append(received)
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = _endpoint(url.path)

        if path.startswith("/stream/"):
            await self._stream(writer, int(path.rsplit("/", 1)[1]), query)
            return True
        if path == "/slow":
            await asyncio.sleep(float(query.get("delay", "5")))
        elif path == "/reset-mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return False
        elif path == "/close-before-head":
            writer.transport.abort()
            return False
        elif path == "/hang":
            self.hang_started.set()
            with contextlib.suppress(ConnectionError):
                await reader.read()  # returns when the gateway closes the connection
            self.hang_closed.set()
            return False
        elif path == "/cookies":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nset-cookie: a=1; Path=/\r\n"
                b"set-cookie: b=2; HttpOnly\r\nset-cookie: c=3\r\n\r\n"
            )
            await writer.drain()
            return True
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)
            await writer.drain()
            return True
        body = json.dumps(
            {
                "method": method,
                "target": target,
                "headers": headers,
                "body_length": length,
                "body_sha256": received.body_sha256,
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-upstream: test\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()
        return True

    async def _stream(self, writer: asyncio.StreamWriter, size: int, query: dict[str, str]) -> None:
        chunked = query.get("chunked") == "1"
        delay = float(query.get("delay", "0"))
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % size
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n%b\r\n\r\n" % framing
        )
        sent = 0
        first = True
        while sent < size:
            piece = PATTERN[: min(len(PATTERN), size - sent)]
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
            await writer.drain()
            if first and delay:
                first = False
                await asyncio.sleep(delay)
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.streams_done += 1


def _endpoint(path: str) -> str:
    """The behaviour word of a path, wherever the gateway mounted it: /api/x/hang -> /hang."""
    for word in ("/stream/", "/status/"):
        if word in path:
            return path[path.index(word) :]
    return "/" + path.rstrip("/").rsplit("/", 1)[-1]


def expected_stream(size: int) -> bytes:
    """The body ``/stream/size`` sends."""
    whole, rest = divmod(size, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]
