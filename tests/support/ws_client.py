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


# ---- raw frames: a client that breaks the rules on purpose ------------------------------------


def ws_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, mask: bool = True
) -> bytes:
    """One WebSocket frame as a client sends it (masked with a zero key unless ``mask`` is
    false), any opcode or flag allowed: the test decides what is wrong with it."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    masked = 0x80 if mask else 0
    size = len(payload)
    if size < 126:
        head = bytes([first, masked | size])
    elif size < 65536:
        head = bytes([first, masked | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, masked | 127]) + size.to_bytes(8, "big")
    return head + (b"\x00\x00\x00\x00" if mask else b"") + payload  # key 0: payload as is


def close_frame(code: int, reason: str = "") -> bytes:
    """The unmasked close frame a server sends: ``code`` and ``reason`` (under 124 bytes)."""
    payload = code.to_bytes(2, "big") + reason.encode()
    return bytes([0x88, len(payload)]) + payload


async def raw_session(
    port: int, path: str, extensions: str | None = None, timeout: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A handshake by hand, answered 101; the open connection and the 101's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
        ).encode()
    )
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer, head


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bool, bytes]:
    """One frame the server sent: (opcode, fin, rsv1, payload)."""
    first, second = await reader.readexactly(2)
    assert not second & 0x80, "a server never masks its frames"
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, bool(first & 0x80), bool(first & 0x40), await reader.readexactly(size)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Every byte the server sends until it closes the connection (a reset ends it too)."""
    received = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received
