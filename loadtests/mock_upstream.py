"""A fast HTTP/1.1 upstream for the demo and for load tests (never the bottleneck).

Endpoints (any path prefix is ignored up to the last known word):
  GET  /json            a fixed 100-byte JSON body
  POST /echo            the request body back, same length
  GET  /bytes/N         N bytes, streamed in 64 KiB pieces (Content-Length set)
  GET  /headers         the request line and headers as JSON
  anything else         the /json body

Run: ``python -m loadtests.mock_upstream --port 9001`` (``--fd N`` instead serves a bound
socket it inherits, as the tests start it). It is a plain asyncio Protocol (uvloop when
present) so that one process serves far more than one gateway worker can send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import time
from email.utils import formatdate
from typing import cast

JSON_BODY = (
    b'{"id": 7, "name": "quartgate demo", "ok": true, "items": [1, 2, 3], '
    b'"pad": "xxxxxxxxxxxxxxxxxxxxxx"}'
)
assert len(JSON_BODY) == 100, len(JSON_BODY)
PIECE = b"x" * 65536


class _Clock:
    """Date and Server header lines, as real upstreams send them; Date rebuilt once a second."""

    second = -1
    lines = b""
    json_response = b""

    @classmethod
    def head(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            date = formatdate(now, usegmt=True).encode("ascii")
            cls.lines = b"server: quartgate-mock\r\ndate: %b\r\n" % date
            cls.json_response = _response(b"200 OK", JSON_BODY)
        return cls.lines


def _response(status: bytes, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %b\r\n%bcontent-type: %b\r\ncontent-length: %d\r\n\r\n%b" % (
        status,
        _Clock.head(),
        content_type,
        len(body),
        body,
    )


def _json_response() -> bytes:
    _Clock.head()
    return _Clock.json_response


class MockUpstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.body_needed = 0
        self.body = bytearray()
        self.pending: tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        while self.transport is not None and not self.streaming:
            if self.pending is not None:
                take = min(self.body_needed, len(self.buf))
                self.body += self.buf[:take]
                del self.buf[:take]
                self.body_needed -= take
                if self.body_needed:
                    return
                method, target, headers = self.pending
                self.pending = None
                self._answer(method, target, headers, bytes(self.body))
                self.body.clear()
                continue
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            method, target, _ = lines[0].split(b" ", 2)
            headers = []
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                value = value.strip()
                headers.append((name, value))
                if name == b"content-length":
                    length = int(value)
            self.pending = (method, target, headers)
            self.body_needed = length

    def _answer(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        assert self.transport is not None
        path = target.split(b"?", 1)[0]
        if path.endswith(b"/echo"):
            self.transport.write(_response(b"200 OK", body, b"application/octet-stream"))
        elif b"/bytes/" in path:
            size = int(path.rsplit(b"/", 1)[1])
            self.streaming = True
            self.stream_task = asyncio.ensure_future(self._stream(size))
        elif path.endswith(b"/headers"):
            payload = json.dumps(
                {
                    "method": method.decode(),
                    "target": target.decode("latin-1"),
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers],
                }
            ).encode()
            self.transport.write(_response(b"200 OK", payload))
        else:
            self.transport.write(_json_response())

    async def _stream(self, size: int) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 200 OK\r\n%bcontent-type: application/octet-stream\r\n"
            b"content-length: %d\r\n\r\n" % (_Clock.head(), size)
        )
        while size > 0 and not transport.is_closing():
            piece = PIECE if size >= len(PIECE) else PIECE[:size]
            transport.write(piece)
            size -= len(piece)
            if transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0.001)  # crude backpressure; the mock only needs to be fast
        self.streaming = False
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, fd: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    if fd is not None:  # a socket bound by whoever started us: the port was never free
        sock = socket.socket(fileno=fd)
        host, port = sock.getsockname()[:2]
        server = await loop.create_server(MockUpstream, sock=sock, backlog=4096)
    else:
        server = await loop.create_server(MockUpstream, host, port, backlog=4096, reuse_port=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream listening on http://{host}:{port} (pid {os.getpid()})", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--fd", type=int, help="serve an inherited bound socket (not --port)")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.fd))
    else:
        uvloop.run(serve(args.host, args.port, args.fd))


if __name__ == "__main__":
    main()
