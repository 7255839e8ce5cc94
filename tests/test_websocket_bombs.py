"""Compression bombs against a real gateway (each engine) and a real upstream.

A client that negotiates permessage-deflate can send 100 KB that inflates to 100 MiB. The
gateway's server inflates a message at most to the route's ``max_message_size``, then fails
the connection with 1009 (gateway/websocket/limits.py): each test plays the client
with a raw socket or a compressing ``websockets`` client and asserts the close frame it
got, what the upstream got, and, for the bomb, the worker's peak memory.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ENGINES, GatewayProcess
from tests.support.ws_client import (
    client,
    close_frame,
    closed_with,
    raw_session,
    read_frame,
    read_until_closed,
    ws_frame,
)
from tests.support.ws_upstream import WebSocketUpstream

LIMIT = 65536
BIG_LIMIT = 1024 * 1024
TOO_BIG = f"message over {LIMIT} bytes once inflated"
DEFLATE = "permessage-deflate"
BINARY, PING, PONG = 0x2, 0x9, 0xA

CONFIG = f"""
[upstreams.ws]
targets = ["{{upstream}}"]

[[routes]]
name = "ws"
path = "/ws"
upstream = "ws"
[routes.websocket]
max_message_size = {LIMIT}

[[routes]]
name = "big"
path = "/big"
upstream = "ws"
[routes.websocket]
max_message_size = {BIG_LIMIT}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: WebSocketUpstream,
) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp(f"ws-bombs-{request.param}")
    path = folder / "gateway.toml"
    path.write_text(CONFIG.format(upstream=upstream.url))
    process = GatewayProcess(path, engine=str(request.param)).start()
    yield process
    process.stop()


def deflate(data: bytes, chunks: int = 1) -> bytes:
    """``data`` ``chunks`` times over as one compressed message (RFC 7692: raw deflate,
    sync-flushed, the final 00 00 ff ff left off)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = [compressor.compress(data) for _ in range(chunks)]
    out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    message = b"".join(out)
    assert message.endswith(b"\x00\x00\xff\xff")
    return message[:-4]


@functools.cache
def bomb() -> bytes:
    """About 100 KB that inflates to 100 MiB of zeros."""
    return deflate(bytes(1024 * 1024), chunks=100)


def reset_peak(gateway: GatewayProcess) -> int:
    """Reset the gateway's peak memory (VmHWM) to its current RSS, and return that, KiB."""
    Path(f"/proc/{gateway.pid}/clear_refs").write_text("5")
    return gateway.rss_kib()


async def test_a_deflate_bomb_is_closed_1009_at_the_routes_limit_without_inflating_it(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """Three ~100 KB frames, each 100 MiB inflated, against a 64 KiB route: the client gets
    1009 once a message passes 64 KiB inflated, the upstream the same, and the worker's
    peak memory barely moves (before: Hypercorn +116 MiB retained after one frame, and
    uvicorn inflated up to its own 16 MiB cap)."""
    payload = bomb()
    assert 90_000 < len(payload) < 110_000
    before = reset_peak(gateway)
    path = f"/ws/{gateway.engine}-bomb/echo"  # one upstream for both engines' gateways
    reader, writer, head = await raw_session(gateway.port, path, DEFLATE)
    assert b"permessage-deflate" in head.lower()  # negotiated: compression is kept
    frame = ws_frame(BINARY, payload, rsv1=True)
    writer.write(frame * 3)
    received = await read_until_closed(reader)
    writer.close()
    peak = gateway.rss_kib("VmHWM") - before
    assert received == close_frame(1009, TOO_BIG)
    assert await upstream.next_close(path) == (1009, TOO_BIG)
    assert peak < 16 * 1024, f"the worker's peak grew {peak} KiB"


async def test_a_compressed_message_is_counted_whole_across_its_fragments(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """Three fragments of about 32 KiB inflated each: none is over 64 KiB, the message is."""
    payload = deflate(bytes(32 * 1024), chunks=3)
    third = len(payload) // 3
    pieces = [payload[:third], payload[third : 2 * third], payload[2 * third :]]
    path = f"/ws/{gateway.engine}-fragments/echo"
    reader, writer, _ = await raw_session(gateway.port, path, DEFLATE)
    writer.write(
        ws_frame(BINARY, pieces[0], fin=False, rsv1=True)
        + ws_frame(0x0, pieces[1], fin=False)
        + ws_frame(0x0, pieces[2])
    )
    received = await read_until_closed(reader)
    writer.close()
    assert received == close_frame(1009, TOO_BIG)
    assert await upstream.next_close(path) == (1009, TOO_BIG)


async def test_compressed_messages_up_to_the_routes_own_limit_pass(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """The limit is each route's: 64 KiB compressed passes on /ws and one byte more does
    not, while 512 KiB passes on /big (1 MiB). A compressing ``websockets`` client."""
    url = f"ws://127.0.0.1:{gateway.port}"
    path = f"/ws/{gateway.engine}-limit/echo"
    async with client(f"{url}/big/echo", compression="deflate") as ws:
        assert ws.protocol.extensions  # compression negotiated
        await ws.send(bytes(512 * 1024))
        assert await ws.recv() == bytes(512 * 1024)
    async with client(url + path, compression="deflate") as ws:
        await ws.send(bytes(LIMIT))
        assert await ws.recv() == bytes(LIMIT)
        await ws.send(bytes(LIMIT + 1))
        close = await closed_with(ws)
    assert (close.code, close.reason) == (1009, TOO_BIG)
    assert await upstream.next_close(path) == (1009, TOO_BIG)


async def test_a_ping_between_compressed_fragments_leaves_the_message_intact(
    gateway: GatewayProcess,
) -> None:
    """RFC 6455 5.4 lets a control frame come between fragments. wsproto (Hypercorn) forgot
    that the message was compressed after the ping and passed its rest on compressed."""
    text = b"fragmented, compressed, pinged " * 100
    payload = deflate(text)
    half = len(payload) // 2
    reader, writer, _ = await raw_session(gateway.port, "/ws/echo", DEFLATE)
    inflater = zlib.decompressobj(-15)  # the server's messages share one context

    async def message() -> bytes:
        opcode, fin, compressed, data = await read_frame(reader)
        assert (opcode, fin) == (BINARY, True)
        return inflater.decompress(data + b"\x00\x00\xff\xff") if compressed else data

    try:
        writer.write(
            ws_frame(BINARY, payload[:half], fin=False, rsv1=True)
            + ws_frame(PING, b"mid-message")
            + ws_frame(0x0, payload[half:])
        )
        assert await read_frame(reader) == (PONG, True, False, b"mid-message")
        assert await message() == text
        # The server's inflater went on right: the next message inflates too.
        writer.write(ws_frame(BINARY, deflate(b"next"), rsv1=True))
        assert await message() == b"next"
    finally:
        writer.close()
