"""WebSocket proxying end to end: a real ``websockets`` client, a real gateway process (each
engine), a real ``websockets`` upstream (tests/support/ws_upstream.py).

Each test names what one side sends and asserts what the other side received: the
message, the close code and reason, or the exact HTTP status of a refused handshake.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus

from tests.support.gateway import ENGINES, GatewayProcess, dead_port
from tests.support.ws_client import client, closed_with, head_and_body, raw_handshake
from tests.support.ws_upstream import WebSocketUpstream

MAX = 65536
KEY = "sesame-open-sesame"

CONFIG = """
[upstreams.ws]
targets = ["{upstream}"]

[upstreams.ws-based]
targets = ["{upstream}/svc/"]

[upstreams.nowhere]
targets = ["http://127.0.0.1:{closed_port}"]

[upstreams.silent]
targets = ["http://127.0.0.1:{silent_port}"]

[upstreams.broken]
targets = ["http://127.0.0.1:{closed_port}"]
[upstreams.broken.breaker]
consecutive_failures = 1

[consumers.alice]
api_key_sha256 = ["{key_sha}"]

[[routes]]
name = "ws"
path = "/ws"
upstream = "ws"
[routes.websocket]
max_message_size = {max}
[routes.headers]
request_set = {{ x-route = "ws" }}
request_remove = ["x-secret"]
response_set = {{ x-served-by = "quartgate" }}

[[routes]]
name = "ws-based"
path = "/basedws"
upstream = "ws-based"
websocket = true

[[routes]]
name = "kept-host"
path = "/kepthost"
upstream = "ws"
preserve_host = true
websocket = true

[[routes]]
name = "keyed"
path = "/keyed"
upstream = "ws"
websocket = true
[routes.auth]
api_key = true

[[routes]]
name = "browser"
path = "/browser"
upstream = "ws"
websocket = true
[routes.cors]
allow_origins = ["https://app.example.com"]

[[routes]]
name = "limited"
path = "/limited"
upstream = "ws"
websocket = true
[routes.rate_limit]
limit = 1
period = 3600

[[routes]]
name = "broken"
path = "/broken"
upstream = "broken"
websocket = true

[[routes]]
name = "plain"
path = "/plain"
upstream = "ws"

[[routes]]
name = "posts"
path = "/posts"
upstream = "ws"
methods = ["POST", "PUT"]
websocket = true

[[routes]]
name = "nowhere"
path = "/nowhere"
upstream = "nowhere"
websocket = true

[[routes]]
name = "idle"
path = "/idle"
upstream = "ws"
[routes.websocket]
idle_timeout = 0.5

[[routes]]
name = "pinged"
path = "/pinged"
upstream = "ws"
[routes.websocket]
ping_interval = 0.3

[[routes]]
name = "silent"
path = "/silent"
upstream = "silent"
[routes.websocket]
connect_timeout = 0.5
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A listener that accepts TCP and never answers a handshake."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="module", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: WebSocketUpstream,
    silent_port: int,
) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp(f"ws-{request.param}")
    path = folder / "gateway.toml"
    path.write_text(
        CONFIG.format(
            upstream=upstream.url,
            closed_port=dead_port(),
            silent_port=silent_port,
            key_sha=hashlib.sha256(KEY.encode()).hexdigest(),
            max=MAX,
        )
    )
    process = GatewayProcess(path, engine=str(request.param)).start()
    yield process
    process.stop()


def ws_url(gateway: GatewayProcess, path: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}"


# ---- messages --------------------------------------------------------------------------


async def test_text_and_binary_echo_up_to_max_message_size(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    text = "é" * (MAX // 2)  # exactly MAX bytes of UTF-8
    binary = bytes(range(256)) * (MAX // 256)
    async with client(ws_url(gateway, "/ws/echo")) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(text)
        assert await ws.recv() == text
        await ws.send(binary)
        assert await ws.recv() == binary
        await ws.send(b"")
        assert await ws.recv() == b""


async def test_a_client_message_over_max_message_size_closes_both_sides_1009(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/toobig/echo")) as ws:
        await ws.send(b"x" * (MAX + 1))
        close = await closed_with(ws)
    reason = f"message of {MAX + 1} bytes over {MAX}"
    assert (close.code, close.reason) == (1009, reason)
    assert await upstream.next_close("/ws/toobig/echo") == (1009, reason)


async def test_an_upstream_message_over_max_message_size_closes_both_sides_1009(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/big")) as ws:
        await ws.send(str(MAX))
        assert await ws.recv() == b"x" * MAX
        await ws.send(str(MAX + 1))
        close = await closed_with(ws)
    assert close.code == 1009
    code, _ = await upstream.next_close("/ws/big")
    assert code == 1009


async def test_fragmented_messages_are_relayed_as_whole_messages(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/fragments")) as ws:
        await ws.send("5")
        assert await ws.recv() == "part0-part1-part2-part3-part4-"
        await ws.send([b"ab", b"cd", b"ef"])  # one binary message in three frames
        assert await ws.recv() == b"abcdef"


async def test_pings_are_answered_on_each_hop(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/ping")) as ws:
        pong = await ws.ping(b"client ping")
        await asyncio.wait_for(pong, 5)  # the gateway's server answered the client
        await ws.send("go")
        assert await ws.recv() == "pong True"  # the gateway answered the upstream's ping
        await ws.send("still open")
        assert await ws.recv() == "still open"


# ---- close codes -------------------------------------------------------------------------


async def test_a_path_on_the_target_url_goes_before_the_handshakes(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/basedws/echo")) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(4000, "done")
    assert await upstream.next_close("/svc/basedws/echo") == (4000, "done")


async def test_the_clients_close_code_and_reason_reach_the_upstream(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/bye/echo")) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(4000, "bye now")
    assert ws.close_code == 4000
    assert await upstream.next_close("/ws/bye/echo") == (4000, "bye now")


async def test_the_upstreams_close_code_and_reason_reach_the_client(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/close")) as ws:
        await ws.send("4001 done here")
        close = await closed_with(ws)
    assert (close.code, close.reason) == (4001, "done here")


async def test_upstream_dying_mid_session_closes_the_client_with_1011(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/ws/die")) as ws:
        await ws.send("die")
        close = await closed_with(ws)
    assert (close.code, close.reason) == (1011, "upstream connection lost")


async def test_client_dying_mid_session_closes_the_upstream_connection(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    ws = await client(ws_url(gateway, "/ws/vanish/echo"))
    await ws.send("x")
    assert await ws.recv() == "x"
    ws.transport.abort()  # no close frame: the TCP connection is reset
    assert await upstream.next_close("/ws/vanish/echo") == (1001, "client went away")


async def test_an_idle_session_is_closed_with_1001_both_ways(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/idle/echo")) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        close = await closed_with(ws)  # nothing more is sent: 0.5 s later the gateway closes
    assert (close.code, close.reason) == (1001, "idle timeout")
    assert await upstream.next_close("/idle/echo") == (1001, "idle timeout")


async def test_an_upstream_that_misses_the_gateways_pings_ends_the_session_1011(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/pinged/echo")) as ws:  # a live upstream answers
        await ws.send("x")
        assert await ws.recv() == "x"
    async with client(ws_url(gateway, "/pinged/mute")) as ws:
        close = await closed_with(ws)  # no pong within ping_interval of a ping
    assert (close.code, close.reason) == (1011, "keepalive ping timeout")


# ---- the handshake -------------------------------------------------------------------------


async def test_auth_refuses_a_handshake_with_its_status_never_101(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    opened = upstream.connections
    response = await raw_handshake(gateway.port, "/keyed/echo")
    status, headers, body = head_and_body(response)
    assert status == 401
    assert b"101" not in response.split(b"\r\n", 1)[0]
    assert headers["www-authenticate"] == 'Key realm="quartgate"'
    assert json.loads(body)["error"] == "unauthorized"
    assert upstream.connections == opened  # the upstream never saw it
    async with client(
        ws_url(gateway, "/keyed/headers"), additional_headers={"x-api-key": KEY}
    ) as ws:
        sent = dict(json.loads(await ws.recv())["headers"])
    assert sent["x-consumer-username"] == "alice"
    assert "x-api-key" in sent


async def test_a_rate_limit_refuses_a_handshake_with_429(gateway: GatewayProcess) -> None:
    async with client(ws_url(gateway, "/limited/echo")) as ws:  # the one allowed
        await ws.send("x")
        assert await ws.recv() == "x"
    response = await raw_handshake(gateway.port, "/limited/echo")
    status, headers, body = head_and_body(response)
    assert status == 429
    assert json.loads(body)["error"] == "rate_limited"
    assert headers["ratelimit-limit"] == "1"
    assert "retry-after" in headers


async def test_an_ejected_upstream_is_503(gateway: GatewayProcess) -> None:
    status, _, body = head_and_body(await raw_handshake(gateway.port, "/broken/x"))
    assert (status, json.loads(body)["error"]) == (502, "upstream_unreachable")
    status, headers, body = head_and_body(await raw_handshake(gateway.port, "/broken/x"))
    assert (status, json.loads(body)["error"]) == (503, "no_healthy_upstream")
    assert headers["retry-after"] == "30"  # the breaker's first ejection_time


async def test_a_cors_route_refuses_a_foreign_origin_with_403(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    status, _, body = head_and_body(
        await raw_handshake(gateway.port, "/browser/echo", "Origin: https://evil.example\r\n")
    )
    assert status == 403
    assert json.loads(body)["error"] == "origin_not_allowed"
    async with client(ws_url(gateway, "/browser/headers"), origin="https://app.example.com") as ws:
        sent = dict(json.loads(await ws.recv())["headers"])
    assert sent["origin"] == "https://app.example.com"


async def test_the_upstream_gets_forwarding_headers_header_rules_traceparent_and_subprotocols(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(
        ws_url(gateway, "/ws/headers?room=1"),
        subprotocols=["chat.v2", "chat.v1"],
        additional_headers={
            "x-request-id": "ws-test-1",
            "cookie": "a=b",
            "x-secret": "do not pass",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        assert ws.response.headers["x-request-id"] == "ws-test-1"
        assert ws.response.headers["x-served-by"] == "quartgate"  # header rules' response side
        seen = json.loads(await ws.recv())
    sent = dict(seen["headers"])
    assert sent["x-route"] == "ws"
    assert "x-secret" not in sent
    # This hop's span: the same trace id, a new parent id.
    trace = sent["traceparent"].split("-")
    assert trace[1] == "0af7651916cd43dd8448eb211c80319c"
    assert trace[2] != "b7ad6b7169203331"
    assert seen["subprotocol"] == "chat.v2"
    assert sent["x-request-id"] == "ws-test-1"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["cookie"] == "a=b"
    assert sent["host"] == upstream.url.removeprefix("http://")
    names = [name for name, _ in seen["headers"]]
    assert names.count("sec-websocket-key") == 1 and names.count("host") == 1


async def test_a_handshake_with_two_hosts_is_refused_before_routing(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    opened = upstream.connections
    response = await raw_handshake(gateway.port, "/ws/echo", "Host: other.example\r\n")
    status, _, body = head_and_body(response)
    # Refused by the gateway on Hypercorn, by uvicorn's parser (with the gateway's body).
    assert (status, json.loads(body)["error"]) == (400, "bad_request")
    assert upstream.connections == opened


async def test_preserve_host_sends_the_clients_host_and_refuses_one_that_is_not_a_host(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    async with client(ws_url(gateway, "/kepthost/headers")) as ws:
        sent = dict(json.loads(await ws.recv())["headers"])
    assert sent["host"] == f"127.0.0.1:{gateway.port}"
    opened = upstream.connections
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"GET /kepthost/echo HTTP/1.1\r\nHost: user@evil.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.split(b" ", 2)[1] == b"400"
    assert upstream.connections == opened


async def test_a_route_without_websocket_answers_a_json_501(gateway: GatewayProcess) -> None:
    status, headers, body = head_and_body(await raw_handshake(gateway.port, "/plain/echo"))
    assert status == 501
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "websocket_not_supported"


async def test_a_path_without_get_answers_a_handshake_405_with_allow(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """The handshake is a GET and goes through the request path's own route match: the
    405 an HTTP GET gets, with its ``Allow``, never a 101."""
    opened = upstream.connections
    response = await raw_handshake(gateway.port, "/posts/echo")
    status, headers, body = head_and_body(response)
    assert status == 405
    assert headers["allow"] == "POST, PUT"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "method_not_allowed"
    assert upstream.connections == opened


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/nowhere/echo", 502, "upstream_unreachable"),
        ("/silent/echo", 504, "upstream_timeout"),
        ("/nope", 404, "route_not_found"),
    ],
)
async def test_upstream_handshake_failures_are_json_errors(
    gateway: GatewayProcess, path: str, status: int, code: str
) -> None:
    got, headers, body = head_and_body(await raw_handshake(gateway.port, path))
    assert (got, json.loads(body)["error"]) == (status, code)
    assert headers["content-type"] == "application/json"
    # The upstream's name and the failure, never where its targets run (the log has it).
    assert b"127.0.0.1" not in body, body


async def test_an_upstream_refusing_the_handshake_is_relayed(gateway: GatewayProcess) -> None:
    with pytest.raises(InvalidStatus) as caught:
        async with client(ws_url(gateway, "/ws/refuse/403")):
            pass
    response = caught.value.response
    assert response.status_code == 403
    assert bytes(response.body) == b"refused with 403"
    assert response.headers["x-refused"] == "yes"


# ---- backpressure ----------------------------------------------------------------------------


async def test_a_client_that_does_not_read_stalls_the_upstream_not_the_gateways_memory(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    """The upstream sends 64 KiB messages as fast as it may; the client reads none. The
    upstream's sends must stall after what the socket buffers and the gateway's bounded
    queues hold (about 150 were seen: mostly the kernel's socket buffers), not after
    everything (it would send all 2,000 messages: 125 MiB)."""
    upstream.release.set()
    async with client(ws_url(gateway, "/ws/flood"), max_queue=1) as ws:
        before = gateway.rss_kib()
        await ws.send("2000")
        stalled = await upstream.flood_stalled()
        grown = gateway.rss_kib() - before
        assert stalled < 400, f"{stalled} messages of 64 KiB were taken by the gateway"
        assert grown < 8 * 1024, f"the gateway grew {grown} KiB"  # ~1.3 MiB was seen
        got = 0
        while got < 2000:  # and every message still arrives, in order
            message = await ws.recv()
            assert message == got.to_bytes(4) * (MAX // 4)
            got += 1


async def test_an_upstream_that_does_not_read_stalls_the_client(
    gateway: GatewayProcess, upstream: WebSocketUpstream
) -> None:
    upstream.release.clear()
    sent = 0
    async with client(ws_url(gateway, "/ws/slow"), write_limit=MAX) as ws:
        message = b"y" * MAX
        with pytest.raises(TimeoutError):  # a send that waits 1 s: the gateway stopped reading
            while sent < 2000:
                async with asyncio.timeout(1):
                    await ws.send(message)
                sent += 1
        assert sent < 400, f"{sent} messages of 64 KiB were taken before the send stalled"
        upstream.release.set()
        for _ in range(sent):
            assert await ws.recv() == MAX.to_bytes(8)
