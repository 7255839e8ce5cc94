"""A hostile client against the real gateway, with a recording upstream behind it.

Every request here could mean two things to two hops. Each test sends exact bytes over a
raw socket and asserts what the client got back, that the gateway closed the connection
where it must (nothing after a refused request is parsed), and the exact bytes the upstream
received (usually: none).
"""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from tests.support.edge import (
    RawResponse,
    closed_within,
    nginx_in_front,
    parse_response,
    read_response,
)
from tests.support.gateway import GatewayProcess
from tests.support.observability import wait_until
from tests.support.scripted import ScriptedUpstream, header, ok, raw_connection, request_line

KEY = "protocol-test-key"

CONFIG = """
[gateway]
header_timeout = 1.0

[upstreams.u]
targets = ["{url}"]

[consumers.ops]
api_key_sha256 = ["{key_hash}"]

[[routes]]
name = "secret"
path = "/secret"
upstream = "u"
[routes.auth]
api_key = true

[[routes]]
name = "all"
path = "/"
upstream = "u"
"""

#: A long keep-alive, so that only the header timeout can cut a slow head.
SERVER = "graceful_timeout = 5.0\nkeep_alive_timeout = 75.0\n"

MakeGateway = Callable[..., GatewayProcess]


def echo(request: bytes, conn: int, index: int) -> bytes:
    return ok(request_line(request))


@pytest.fixture
def recorded(
    make_gateway: MakeGateway, engine: str
) -> Iterator[tuple[GatewayProcess, ScriptedUpstream]]:
    upstream = ScriptedUpstream(echo).__enter__()
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    gateway = make_gateway(
        CONFIG.format(url=upstream.url, key_hash=key_hash), engine=engine, server_config=SERVER
    )
    yield gateway, upstream
    upstream.__exit__(None, None, None)


def exchange(port: int, data: bytes, wait: float = 10.0) -> tuple[bytes, bool]:
    """Send ``data``; return what came back and whether the gateway closed the connection
    (waiting up to ``wait`` s for the close once a whole response has arrived)."""
    received = b""
    with raw_connection(port) as sock:
        sock.sendall(data)
        sock.settimeout(wait)
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return received, True
                received += chunk
                if _whole(received):
                    sock.settimeout(2.0 if wait > 2.0 else wait)
        except TimeoutError:
            return received, False
        except ConnectionError:
            return received, True


def _whole(data: bytes) -> bool:
    response = parse_response(data)
    length = response.header("content-length")
    return length is not None and len(response.body) >= int(length)


SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\nhost: gw\r\n\r\n"

AMBIGUOUS = {
    "cl-and-te": b"POST /a HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n"
    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-and-cl-0": b"POST /a HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n"
    b"content-length: 0\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "obs-folded-te": b"POST /a HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n"
    b"transfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "te-in-http-1.0": b"POST /a HTTP/1.0\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "conflicting-cl": b"POST /a HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n"
    b"content-length: 5\r\n\r\nabcde" + SMUGGLED,
    "te-not-chunked": b"POST /a HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: xchunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    "obs-fold-anywhere": b"GET /a HTTP/1.1\r\nhost: gw\r\nx-a: b\r\n c\r\n\r\n" + SMUGGLED,
    "ctl-0x01-in-value": b"GET /a HTTP/1.1\r\nhost: gw\r\nx-a: b\x01c\r\n\r\n" + SMUGGLED,
    "ctl-0x7f-in-value": b"GET /a HTTP/1.1\r\nhost: gw\r\nx-a: b\x7fc\r\n\r\n" + SMUGGLED,
    "two-hosts": b"GET /a HTTP/1.1\r\nhost: gw\r\nhost: evil\r\n\r\n" + SMUGGLED,
}


@pytest.mark.parametrize("name", list(AMBIGUOUS))
def test_an_ambiguous_request_is_refused_the_connection_closed_and_nothing_forwarded(
    recorded: tuple[GatewayProcess, ScriptedUpstream], name: str
) -> None:
    gateway, upstream = recorded
    data, closed = exchange(gateway.port, AMBIGUOUS[name])
    response = parse_response(data)
    assert response.status in (400, 501), data[:200]
    assert closed, "the gateway must close the connection after refusing the request"
    # One answer: the smuggled request after it was never read.
    assert len(response.body) == int(response.header("content-length") or -1)
    assert response.header("content-type") == "application/json"
    assert upstream.received() == b""
    # Bad input leaves a line in the error log (there is no access log here).
    wait_until(lambda: "400" in gateway.logs() or "501" in gateway.logs(), what="a log line")


def test_a_fragment_never_reaches_an_upstream_nor_bypasses_a_route(
    recorded: tuple[GatewayProcess, ScriptedUpstream], engine: str
) -> None:
    """``/secret#x`` must not be matched as ``secret#x`` by the catch-all and served as
    ``/secret`` by an upstream that drops the fragment. Under Hypercorn (h11 keeps the
    ``#``) the gateway refuses it: 400 and close. uvicorn's parser removes the fragment
    before the app sees the request, so the gateway routes ``/secret`` and its auth applies.
    """
    gateway, upstream = recorded
    # Under uvicorn the connection stays open after the answer (only its status matters):
    # the client closes it rather than waiting for a close that is not coming.
    close = b"" if engine == "hypercorn" else b"connection: close\r\n"
    for target in (b"/secret#x", b"/a?b#c", b"/secret#/../a"):
        request = b"GET %b HTTP/1.1\r\nhost: gw\r\n%b\r\n" % (target, close)
        data, closed = exchange(gateway.port, request)
        response = parse_response(data)
        if engine == "hypercorn":
            assert response.status == 400 and b"fragment" in response.body and closed
        else:
            assert response.status in (200, 401)
    assert b"#" not in upstream.received()
    assert b"/secret" not in upstream.received()  # never without its key
    data, _ = exchange(
        gateway.port, b"GET /secret HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"
    )
    assert parse_response(data).status == 401


def test_h2c_upgrade_is_never_honoured_nor_forwarded(
    recorded: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = recorded
    upgrade = (
        b"GET /inner HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings\r\n"
        b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    with raw_connection(gateway.port) as sock:
        sock.sendall(upgrade)
        first = _read_response(sock)
        # Still HTTP/1.1 on the same connection: a second request is answered as one.
        sock.sendall(b"GET /second HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        second = _read_response(sock)
    assert first.status == 200 and b"101" not in first.raw.split(b"\r\n", 1)[0]
    assert first.body == b"GET /inner HTTP/1.1" and second.body == b"GET /second HTTP/1.1"
    sent = upstream.requests[0]
    assert header(sent, b"upgrade") is None and header(sent, b"http2-settings") is None
    assert header(sent, b"connection") is None


def test_a_websocket_handshake_on_a_proxied_route_is_a_json_501(
    recorded: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = recorded
    handshake = (
        b"GET /chat HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    )
    data, _ = exchange(gateway.port, handshake)
    response = parse_response(data)
    assert response.status == 501, data[:300]
    assert b"websocket_not_supported" in response.body
    assert upstream.received() == b""
    assert "Traceback" not in gateway.logs()


def test_path_escapes_are_forwarded_as_sent(
    recorded: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, _ = recorded
    for target in (b"/api/v4/projects/group%2Fproject", b"/s3/a%2Fb%20c?x=%2F"):
        data, _ = exchange(
            gateway.port, b"GET %b HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n" % target
        )
        assert parse_response(data).body == b"GET %b HTTP/1.1" % target


@pytest.mark.parametrize("engine", ["hypercorn"])
def test_a_slow_request_head_is_cut_by_the_header_timeout(
    recorded: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = recorded
    with raw_connection(gateway.port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: gw\r\n")  # and never the blank line
        data = closed_within(sock, 30.0)  # header_timeout 1 s; keep-alive 75 s
    assert data is not None, "the connection must be closed by the header timeout"
    response = parse_response(data)
    assert response.status == 408 and b"request_header_timeout" in response.body
    assert upstream.received() == b""


@pytest.mark.parametrize("engine", ["hypercorn"])
def test_an_invalid_http2_path_is_a_400_on_its_stream_and_the_connection_lives(
    recorded: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = recorded
    bad_paths = [b"/a HTTP/1.1", b"/a\tb", b"/a\x01b", b"/caf\xc3\xa9", b"/a#b", b"/a b"]
    with raw_connection(gateway.port) as sock:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        streams = {}
        for path in [*bad_paths, b"/good"]:
            stream_id = conn.get_next_available_stream_id()
            streams[stream_id] = path
            conn.send_headers(
                stream_id,
                [
                    (b":method", b"GET"),
                    (b":path", path),
                    (b":scheme", b"http"),
                    (b":authority", b"gw"),
                ],
                end_stream=True,
            )
            sock.sendall(conn.data_to_send())
        statuses = _h2_statuses(sock, conn, set(streams))
    assert {streams[s]: code for s, code in statuses.items()} == {
        **{p: 400 for p in bad_paths},
        b"/good": 200,
    }
    assert [request_line(r) for r in upstream.requests] == [b"GET /good HTTP/1.1"]


def _h2_statuses(
    sock: socket.socket, conn: h2.connection.H2Connection, streams: set[int]
) -> dict[int, int]:
    statuses: dict[int, int] = {}
    ended: set[int] = set()
    sock.settimeout(10)
    while ended != streams:
        data = sock.recv(65536)
        assert data, f"connection closed; answered so far: {statuses}"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        sock.sendall(conn.data_to_send())
    return statuses


def _read_response(sock: socket.socket) -> RawResponse:
    sock.settimeout(10)
    return parse_response(read_response(sock))


@pytest.mark.parametrize("engine", ["hypercorn"])
def test_h2c_upgrade_through_a_websocket_ready_nginx_opens_no_tunnel(
    recorded: tuple[GatewayProcess, ScriptedUpstream], tmp_path: Path
) -> None:
    """The attack: nginx forwards Upgrade for WebSockets; a 101 from the gateway would make
    nginx a blind tunnel, and an HTTP/2 stream for /internal (403 at nginx) would pass."""
    gateway, upstream = recorded
    websocket_ready = (
        'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade";'
    )
    with (
        nginx_in_front(
            tmp_path / "nginx",
            gateway.port,
            server_extra="location /internal { return 403; }",
            location_extra=websocket_ready,
        ) as port,
        raw_connection(port) as sock,
    ):
        sock.sendall(
            b"GET /public HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings\r\n"
            b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        first = _read_response(sock)
        assert first.status == 200 and first.body == b"GET /public HTTP/1.1"
        # What a client would send inside the tunnel: the preface and a stream for /internal.
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (b":method", b"GET"),
                (b":path", b"/internal/admin"),
                (b":scheme", b"http"),
                (b":authority", b"gw"),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        closed_within(sock, 5.0)
    assert b"/internal" not in upstream.received()
    assert [request_line(r) for r in upstream.requests] == [b"GET /public HTTP/1.1"]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\r\n", id="a-stray-crlf"),
        pytest.param(b"GARBAGE\r\n\r\n", id="a-garbage-request"),
    ],
)
@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
def test_garbage_after_a_request_never_costs_that_request_its_response(
    recorded: tuple[GatewayProcess, ScriptedUpstream], tail: bytes, version: bytes
) -> None:
    """The upstream runs the first request; its response must reach the client before
    the garbage after it is refused (or ignored) and the connection closed."""
    gateway, upstream = recorded
    data, closed = exchange(
        gateway.port, b"GET /first HTTP/%b\r\nhost: gw\r\n\r\n%b" % (version, tail)
    )
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]
    assert b"GET /first HTTP/1.1" in data
    # An empty line before a request line may be ignored (RFC 9112 2.2): then an HTTP/1.1
    # connection may stay open. Anything else ends it.
    assert closed or (version == b"1.1" and tail == b"\r\n")
    assert [request_line(r) for r in upstream.requests] == [b"GET /first HTTP/1.1"]


@pytest.mark.parametrize("engine", ["hypercorn"])
def test_a_content_length_h11_cannot_hold_is_a_json_400(
    recorded: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = recorded
    data, closed = exchange(
        gateway.port,
        b"POST /a HTTP/1.1\r\nhost: gw\r\ncontent-length: 100000000000000000000\r\n\r\nx",
    )
    response = parse_response(data)
    assert response.status == 400 and closed
    assert response.header("content-type") == "application/json"
    assert b'"error": "bad_request"' in response.body
    assert upstream.received() == b""
