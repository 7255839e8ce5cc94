"""Small helpers for WebSocket tests: a client connect with the test's defaults, a raw
handshake that returns the exact response bytes, and waiting for a close."""

from __future__ import annotations

import asyncio
import base64
import os

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close


def client(url: str, **kwargs: object) -> connect:
    """A ``websockets`` client with no compression and no pings unless asked."""
    options: dict[str, object] = {
        "compression": None,
        "ping_interval": None,
        "open_timeout": 10,
        "max_size": 64 * 1024 * 1024,
        "proxy": None,
    }
    options.update(kwargs)
    return connect(url, **options)  # type: ignore[arg-type]


async def closed_with(connection: ClientConnection, timeout: float = 10.0) -> Close:
    """Read until the connection closes; the close frame the client received."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await connection.recv()
        except ConnectionClosed:
            pass
    received = connection.protocol.close_rcvd
    assert received is not None, "the connection dropped without a close frame"
    return received


async def raw_handshake(port: int, path: str, extra: str = "", timeout: float = 10.0) -> bytes:
    """Send a WebSocket handshake by hand; every byte the gateway answers until it closes
    (or, for a 101, what arrived within ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    await writer.drain()
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in data:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
            _, headers, body = head_and_body(data)
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                body += chunk
                data += chunk
    finally:
        writer.close()
    return data


def head_and_body(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
