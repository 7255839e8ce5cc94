"""Hostile WebSocket clients against a real gateway (each engine) and a real upstream:
bytes before the 101 never leave a session open, headers the client names in
``Connection`` are hop-by-hop on the WebSocket path as on HTTP, and a frame that breaks
RFC 6455 is answered with a close frame (1002, 1007) and one log line, not a silent drop
or a traceback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from tests.support.gateway import ENGINES, GatewayProcess
from tests.support.ws_client import (
    client,
    close_frame,
    head_and_body,
    raw_handshake,
    raw_session,
    read_until_closed,
    ws_frame,
)
from tests.support.ws_upstream import WebSocketUpstream

CONFIG = """
[upstreams.ws]
targets = ["{upstream}"]

[[routes]]
name = "ws"
path = "/ws"
upstream = "ws"
websocket = true

[access_log]
path = "{access_log}"
format = "json"
flush_interval = 0.05
"""

HANDSHAKE = (
    b"GET /ws/echo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
#: A masked text frame "hi", as a client would send it after the 101.
FRAME = b"\x81\x82\x00\x00\x00\x00hi"


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
    folder = tmp_path_factory.mktemp(f"ws-hostile-{request.param}")
    path = folder / "gateway.toml"
    path.write_text(CONFIG.format(upstream=upstream.url, access_log=folder / "access.log"))
    process = GatewayProcess(path, engine=str(request.param)).start()
    yield process
    process.stop()


def access_record(gateway: GatewayProcess, path: str, timeout: float = 10.0) -> dict[str, object]:
    """The access log line of the session on ``path``, waited for."""
    log = gateway.config.parent / "access.log"
    deadline = time.monotonic() + timeout
    while True:
        for line in log.read_text().splitlines() if log.exists() else ():
            record = json.loads(line)
            if record["path"] == path:
                return dict(record)
        assert time.monotonic() < deadline, f"no access log line for {path}"
        time.sleep(0.05)


async def send_raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes; everything the gateway answers until it closes or ``timeout`` passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return received


async def first_response(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes; the first response the gateway answers (head, and a body as long as its
    Content-Length), without waiting for a close a keep-alive connection never makes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            _, headers, _ = head_and_body(head)
            return head + await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()


def upstream_sessions_settle(upstream: WebSocketUpstream, opened: int, timeout: float) -> int:
    """How many upstream sessions opened since ``opened`` are still open after waiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if upstream.connections - opened <= upstream.closed.qsize():
            break
        time.sleep(0.05)
    return upstream.connections - opened - upstream.closed.qsize()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"Content-Length: 5\r\n\r\nHELLO", id="content-length"),
        pytest.param(b"Transfer-Encoding: chunked\r\n\r\n5\r\nHELLO\r\n0\r\n\r\n", id="chunked"),
    ],
)
async def test_a_handshake_with_a_body_is_refused_and_no_upstream_session_opens(
    gateway: GatewayProcess, upstream: WebSocketUpstream, body: bytes
) -> None:
    opened = upstream.connections
    response = await first_response(gateway.port, HANDSHAKE + body)
    status, _, _ = head_and_body(response)
    assert status == 400, response[:300]
    assert b" 101 " not in response
    assert upstream.connections == opened


@pytest.mark.parametrize("engine", ["hypercorn"])
async def test_frames_sent_before_the_101_leave_no_session_open(
    tmp_path_factory: pytest.TempPathFactory, upstream: WebSocketUpstream, engine: str
) -> None:
    """Hypercorn answers bytes that arrive with the handshake with a 400; the upstream
    session the gateway may have opened meanwhile must close at once, not at idle_timeout
    (300 s by default): 20 such handshakes must leave nothing open."""
    folder = tmp_path_factory.mktemp("ws-early")
    path = folder / "gateway.toml"
    path.write_text(CONFIG.format(upstream=upstream.url, access_log=folder / "access.log"))
    gateway = GatewayProcess(path, engine=engine).start()
    try:
        while not upstream.closed.empty():
            upstream.closed.get_nowait()
        opened = upstream.connections
        answers = await asyncio.gather(
            *(send_raw(gateway.port, HANDSHAKE + b"\r\n" + FRAME, 5.0) for _ in range(20))
        )
        assert all(a.startswith(b"HTTP/1.1 400") for a in answers), answers[0][:200]
        still_open = await asyncio.to_thread(upstream_sessions_settle, upstream, opened, 10.0)
        assert still_open == 0
        async with client(f"ws://127.0.0.1:{gateway.port}/ws/echo") as ws:  # still serving
            await ws.send("after")
            assert await ws.recv() == "after"
    finally:
        gateway.stop()


async def test_headers_named_in_connection_are_not_forwarded(
    gateway: GatewayProcess,
) -> None:
    async with client(
        f"ws://127.0.0.1:{gateway.port}/ws/headers",
        additional_headers={"X-Hop": "secret-hop", "Connection": "Upgrade, X-Hop"},
    ) as ws:
        sent = dict(json.loads(await ws.recv())["headers"])
    assert "x-hop" not in sent


async def test_a_handshake_that_is_not_a_get_is_refused(gateway: GatewayProcess) -> None:
    response = await raw_handshake(gateway.port, "/ws/echo")
    assert response.startswith(b"HTTP/1.1 101")  # the control: a GET handshake works
    post = HANDSHAKE.replace(b"GET ", b"POST ", 1) + b"Content-Length: 0\r\n\r\n"
    status, _, body = head_and_body(await send_raw(gateway.port, post))
    assert status in (400, 405), body
    assert b"does not proxy WebSocket" not in body


async def test_a_ping_flood_from_a_client_that_never_reads_stays_bounded(
    gateway: GatewayProcess,
) -> None:
    """Each ping earns a pong; a client that never reads them must be stopped (reading
    paused), not buffered for: at most ~60 MB of pings go out within 10 s, and the gateway
    grows by far less than what it was sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(HANDSHAKE + b"\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    before = gateway.rss_kib()
    ping = b"\x89\xfd\x00\x00\x00\x00" + b"p" * 125  # a masked ping, 125-byte payload
    batch = ping * 800  # ~105 KB
    sent = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    try:
        while sent < 60_000_000 and loop.time() < deadline:
            writer.write(batch)
            async with asyncio.timeout(max(0.1, deadline - loop.time())):
                await writer.drain()  # blocks once the gateway stops reading
            sent += len(batch)
    except TimeoutError:
        pass
    grown = gateway.rss_kib() - before
    writer.transport.abort()
    assert grown < 20 * 1024, f"grew {grown} KiB after {sent} bytes of pings"
    async with client(f"ws://127.0.0.1:{gateway.port}/ws/echo") as ws:  # still serving
        await ws.send("after")
        assert await ws.recv() == "after"


#: Frames that break RFC 6455, and the close code each earns (7.4.1).
VIOLATIONS = {
    "unmasked": (ws_frame(0x1, b"hi", mask=False), 1002),  # 5.1: a client masks every frame
    "reserved-opcode": (ws_frame(0x3, b"hi"), 1002),  # 5.2: 0x3-0x7 are reserved
    "rsv2-bit": (b"\xa1\x82\x00\x00\x00\x00hi", 1002),  # 5.2: no extension uses it
    "continuation-first": (ws_frame(0x0, b"hi"), 1002),  # 5.4: nothing to continue
    "fragmented-ping": (ws_frame(0x9, b"", fin=False), 1002),  # 5.5: control frames are whole
    "invalid-utf-8": (ws_frame(0x1, b"\xff\xfe"), 1007),  # 8.1: text is UTF-8
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
async def test_a_protocol_violation_is_answered_with_a_close_frame(
    gateway: GatewayProcess, upstream: WebSocketUpstream, name: str
) -> None:
    """RFC 6455 7.1.7: the connection is failed with a close frame (Hypercorn used to drop
    it silently), then closed; the upstream gets the same code and reason."""
    data, code = VIOLATIONS[name]
    path = f"/ws/{gateway.engine}-{name}/echo"  # one upstream for both engines' gateways
    reader, writer, _ = await raw_session(gateway.port, path)
    writer.write(data)
    received = await read_until_closed(reader)
    writer.close()
    # One unmasked close frame and nothing else, then the connection closed.
    assert received[:1] == b"\x88" and received[1] == len(received) - 2, received
    assert int.from_bytes(received[2:4], "big") == code, received
    reason = received[4:].decode("utf-8")
    if code == 1007:
        assert received == close_frame(1007, "invalid UTF-8 text")
    assert await upstream.next_close(path) == (code, reason)
    record = await asyncio.to_thread(access_record, gateway, path)
    assert record["error"] == f"ws_close:{code}:{code}:gateway"  # the gateway's server closed


async def test_invalid_utf_8_costs_one_log_line_and_no_traceback(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """uvicorn logged a traceback for each such message: any client could flood the log."""
    path = f"/ws/{gateway.engine}-utf8-log/echo"
    reader, writer, _ = await raw_session(gateway.port, path)
    port = writer.get_extra_info("sockname")[1]
    writer.write(ws_frame(0x1, b"caf\xc3"))  # a truncated two-byte sequence
    received = await read_until_closed(reader)
    writer.close()
    assert received == close_frame(1007, "invalid UTF-8 text")
    assert await upstream.next_close(path) == (1007, "invalid UTF-8 text")
    line = f"{port}): WebSocket closed with 1007: invalid UTF-8 text"
    deadline = time.monotonic() + 10
    while line not in gateway.logs():
        assert time.monotonic() < deadline, gateway.logs()[-2000:]
        await asyncio.sleep(0.05)
    logs = gateway.logs()
    assert [entry for entry in logs.splitlines() if str(port) in entry] == [
        entry for entry in logs.splitlines() if line in entry
    ]
    assert len([entry for entry in logs.splitlines() if line in entry]) == 1
    assert "Traceback" not in logs
    assert "Invalid UTF-8" not in logs  # uvicorn's own message


async def test_a_message_over_the_servers_own_cap_fails_the_connection_1009(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """Past the server's cap (16 MiB on both engines, before the route's check) the client
    gets 1009 and the connection is closed. Hypercorn sent the 1009 but kept the connection,
    and the partial message grew with all the client sent on (+76 MiB for 60 MiB more)."""
    path = f"/ws/{gateway.engine}-over-cap/echo"
    reader, writer, _ = await raw_session(gateway.port, path)
    writer.write(ws_frame(0x2, bytes(16 * 1024 * 1024 + 1)))
    received = await read_until_closed(reader, timeout=30.0)
    writer.close()
    assert received[:1] == b"\x88" and received[1] == len(received) - 2, received
    assert int.from_bytes(received[2:4], "big") == 1009
    assert "16777216" in received[4:].decode("utf-8")  # the server's cap, in its words
    code, _ = await upstream.next_close(path)
    assert code == 1009
    record = await asyncio.to_thread(access_record, gateway, path)
    assert record["error"] == "ws_close:1009:1009:gateway"
