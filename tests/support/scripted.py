"""A raw TCP upstream that records every byte it receives and answers from a script.

It plays both sides of the adversarial tests: the *recording* upstream (what exactly did
the gateway send?) and the *hostile* upstream (what does the gateway do with this reply?).
It runs its own event loop in a thread, so any test can use it.

``script(request, conn, index)`` is called for each complete request read from a
connection (``request``: its raw bytes, head and body; ``conn``: the connection's number
from 0; ``index``: the request's number on that connection) and returns what to do:
``bytes`` to write, a list of ``bytes`` and ``float`` (write, or sleep that many seconds)
and ``threading.Event`` (wait until the test sets it),
or ``CLOSE`` / ``RESET`` items to end the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

CLOSE = "close"
RESET = "reset"

Step = bytes | float | str | threading.Event
Script = Callable[[bytes, int, int], bytes | list[Step]]


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


@dataclass
class Connection:
    number: int
    received: bytearray = field(default_factory=bytearray)
    requests: list[bytes] = field(default_factory=list)
    closed_by_peer: threading.Event = field(default_factory=threading.Event)


class ScriptedUpstream:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[Connection] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- what tests read -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[bytes]:
        """Every request received, in arrival order across connections."""
        with self._lock:
            return [r for c in self.connections for r in c.requests]

    def received(self) -> bytes:
        """Every byte received on every connection, concatenated."""
        with self._lock:
            return b"".join(bytes(c.received) for c in self.connections)

    # ---- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    # ---- serving -----------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            conn = Connection(len(self.connections))
            self.connections.append(conn)
        self._writers.add(writer)
        buffer = bytearray()
        try:
            index = 0
            while True:
                request = await _read_request(reader, buffer, conn)
                if request is None:
                    break
                with self._lock:
                    conn.requests.append(request)
                steps = self.script(request, conn.number, index)
                index += 1
                if await self._play(steps if isinstance(steps, list) else [steps], writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            conn.closed_by_peer.set()
            self._writers.discard(writer)
            writer.close()

    async def _play(self, steps: list[Step], writer: asyncio.StreamWriter) -> bool:
        """Write the steps; True when the connection was ended."""
        for step in steps:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            elif isinstance(step, float | int):
                await asyncio.sleep(step)
            elif isinstance(step, threading.Event):  # until the test sets it
                await asyncio.to_thread(step.wait, 30)
            elif step == CLOSE:
                writer.close()
                return True
            elif step == RESET:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return True
        return False


async def _read_request(
    reader: asyncio.StreamReader, buffer: bytearray, conn: Connection
) -> bytes | None:
    """One request's raw bytes (head, then a Content-Length or chunked body); None at EOF."""

    async def more() -> bool:
        data = await reader.read(65536)
        if not data:
            return False
        conn.received += data
        buffer.extend(data)
        return True

    while b"\r\n\r\n" not in buffer:
        if not await more():
            return None
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        position = end
        while True:
            while b"\r\n" not in buffer[position:]:
                if not await more():
                    return None
            line_end = buffer.index(b"\r\n", position)
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            needed = line_end + 2 + size + 2
            while len(buffer) < needed:
                if not await more():
                    return None
            position = needed
            if size == 0:
                break
        end = position
    else:
        while len(buffer) < end + length:
            if not await more():
                return None
        end += length
    request = bytes(buffer[:end])
    del buffer[:end]
    return request


def request_line(request: bytes) -> bytes:
    return request.split(b"\r\n", 1)[0]


def header(request: bytes, name: bytes) -> bytes | None:
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@contextlib.contextmanager
def raw_connection(port: int, timeout: float = 10.0) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()
