"""Hostile requests over a raw socket against the real gateway: each is refused or made
harmless, and nothing ambiguous reaches an upstream."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.edge import EvilUpstream, closed_within, raw_request, read_response
from tests.support.gateway import ENGINES, GatewayProcess
from tests.support.upstream import UpstreamServer

KEY = "hostile-test-key"

CONFIG = """
[gateway]
max_body_size = 1000
max_header_count = 20
body_timeout = 1.0

[upstreams.main]
targets = ["{upstream}"]

[upstreams.evil]
targets = ["http://127.0.0.1:{evil}"]

[consumers.ops]
api_key_sha256 = ["{key_hash}"]

[[routes]]
name = "public"
path = "/public"
upstream = "main"

[[routes]]
name = "admin"
path = "/admin"
upstream = "main"
[routes.auth]
api_key = true

[[routes]]
name = "param"
path = "/p/{{id}}"
upstream = "main"
[routes.headers]
request_set = {{ x-id = "{{id}}" }}

[[routes]]
name = "evil"
path = "/evil"
upstream = "evil"
"""

SERVER = "graceful_timeout = 10.0\nkeep_alive_timeout = 1.0\n"


@pytest.fixture(scope="module")
def evil() -> Iterator[EvilUpstream]:
    server = EvilUpstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-bad: a\x00b\r\n\r\nok"
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest,
    upstream: UpstreamServer,
    evil: EvilUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The same gateway on each engine: every test here runs once per engine."""
    folder = tmp_path_factory.mktemp("hostile")
    config = folder / "gateway.toml"
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    config.write_text(CONFIG.format(upstream=upstream.url, evil=evil.port, key_hash=key_hash))
    process = GatewayProcess(config, server_config=SERVER, engine=request.param).start()
    yield process
    assert process.stop() == 0, process.logs()


def targets_seen(upstream: UpstreamServer) -> list[str]:
    return [r.target for r in upstream.requests]


def get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n" + extra + b"\r\n"


# ---- framing ---------------------------------------------------------------------------------


def test_content_length_with_transfer_encoding_is_400(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    reply = raw_request(
        gateway.port,
        b"POST /public/smuggle HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
    )
    assert reply.status == 400
    assert not any("smuggle" in t or t == "/admin" for t in targets_seen(upstream))


def test_duplicate_differing_content_length_is_400(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    reply = raw_request(
        gateway.port,
        b"POST /public/dupcl HTTP/1.1\r\nhost: gw\r\ncontent-length: 3\r\n"
        b"content-length: 5\r\nconnection: close\r\n\r\nabcde",
    )
    assert reply.status == 400
    assert not any("dupcl" in t for t in targets_seen(upstream))


def test_huge_content_length_is_413_without_reading(gateway: GatewayProcess) -> None:
    reply = raw_request(
        gateway.port,
        b"POST /public/huge HTTP/1.1\r\nhost: gw\r\ncontent-length: 99999999999999999999\r\n"
        b"connection: close\r\n\r\n",
    )
    assert reply.status == 413
    assert json.loads(reply.body)["error"] == "payload_too_large"


def test_chunked_body_over_limit_is_413_while_streaming(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    # uvicorn hands the app a chunked body that arrived whole as one message (more_body
    # false): that message is compared to max_body_size too.
    chunk = b"x" * 400
    pieces = [
        b"POST /public/chunky HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n",
        *[b"%x\r\n%b\r\n" % (len(chunk), chunk)] * 5,
        b"0\r\n\r\n",
    ]
    reply = raw_request(gateway.port, pieces)
    assert reply.status == 413
    complete = [r for r in upstream.requests if "chunky" in r.target and r.body_length == 2000]
    assert not complete


def test_a_body_over_the_limit_sent_on_is_dropped_and_the_connection_not_held(
    make_gateway: Callable[..., GatewayProcess],
    upstream: UpstreamServer,
    evil: EvilUpstream,
    engine: str,
) -> None:
    """A client goes on sending a chunked body (1 MB) the gateway refused at 1000 bytes.
    Hypercorn's reader used to wait forever for the app to read that body: the client never
    got its 413, and the connection held the drain until graceful_timeout (here an hour, so
    only a connection that is let go lets the gateway exit)."""
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    gateway = make_gateway(
        CONFIG.format(upstream=upstream.url, evil=evil.port, key_hash=key_hash),
        engine=engine,
        server_config="graceful_timeout = 3600.0\n",
    )
    chunk = b"%x\r\n%b\r\n" % (5000, b"x" * 5000)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            b"POST /public/flood HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):  # a server that answered and closed
            for _ in range(200):
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 413")
        gateway.signal(signal.SIGTERM)
        assert gateway.process is not None
        assert gateway.process.wait(60) == 0, gateway.logs()
    assert not [r for r in upstream.requests if r.target == "/public/flood"]


def test_too_many_headers_is_431(gateway: GatewayProcess) -> None:
    extra = b"".join(b"x-h%d: v\r\n" % i for i in range(30))
    reply = raw_request(gateway.port, get(b"/public/many", extra))
    assert reply.status == 431


def test_oversized_header_block_is_431(gateway: GatewayProcess) -> None:
    reply = raw_request(gateway.port, get(b"/public/big", b"x-big: " + b"a" * 20000 + b"\r\n"))
    assert reply.status == 431


def test_connect_and_unknown_methods_are_refused(gateway: GatewayProcess) -> None:
    connect = raw_request(
        gateway.port, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\n\r\n"
    )
    assert connect.status in (400, 405, 501)
    other = raw_request(gateway.port, b"BREW /public/x HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert other.status == 501


# ---- request-target normalisation -------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        b"/admin",
        b"//admin",
        b"/public/../admin",
        b"/public/%2e%2e/admin",
        b"/public/%2E%2E/admin/x",
        b"/public/..%2Fadmin",
        b"/public/.%2e/admin",
        b"/./admin",
        b"/public\\..\\admin",
        b"/public/..%5Cadmin",
    ],
)
def test_normalised_path_cannot_bypass_a_protected_route(
    gateway: GatewayProcess, upstream: UpstreamServer, target: bytes
) -> None:
    before = len(upstream.requests)
    reply = raw_request(gateway.port, get(target))
    assert reply.status == 401, reply.raw[:300]
    assert reply.header("www-authenticate") == 'Key realm="quartgate"'
    assert len(upstream.requests) == before


def test_normalised_path_is_what_is_forwarded(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    reply = raw_request(gateway.port, get(b"/admin/../public/./a//b", b"x-api-key: nope\r\n"))
    assert reply.status == 200
    assert json.loads(reply.body)["target"] == "/public/a/b"


def test_tomcat_style_dot_parameters_are_refused(gateway: GatewayProcess) -> None:
    assert raw_request(gateway.port, get(b"/public/..;/admin")).status == 400


def test_absolute_form_never_chooses_the_upstream(
    gateway: GatewayProcess, upstream: UpstreamServer, evil: EvilUpstream
) -> None:
    target = b"http://127.0.0.1:%d/public/abs?q=1" % evil.port
    reply = raw_request(gateway.port, get(target))
    assert reply.status == 200  # routed by the table to "main", not to the authority
    seen = json.loads(reply.body)
    assert seen["target"] == "/public/abs?q=1"


# ---- CR / LF / NUL ---------------------------------------------------------------------------


def test_nul_in_a_request_header_is_400(gateway: GatewayProcess) -> None:
    assert raw_request(gateway.port, get(b"/public/nul", b"x-a: a\x00b\r\n")).status == 400


def test_encoded_crlf_cannot_reach_an_upstream_header(
    gateway: GatewayProcess, upstream: UpstreamServer
) -> None:
    refused = raw_request(gateway.port, get(b"/p/a%0d%0ax-injected:%201"))
    assert refused.status == 400
    ok = raw_request(gateway.port, get(b"/p/plain%20id"))
    assert ok.status == 200
    headers = dict(tuple(h) for h in json.loads(ok.body)["headers"])
    assert headers["x-id"] == "plain id"
    assert not any("x-injected" in name for r in upstream.requests for name, _ in r.headers)


def test_obsolete_line_folding_never_reaches_the_upstream_as_crlf(
    gateway: GatewayProcess,
) -> None:
    reply = raw_request(gateway.port, get(b"/public/fold", b"x-fold: a\r\n b\r\n"))
    if reply.status == 200:  # h11 unfolds obs-fold into one line
        headers = dict(tuple(h) for h in json.loads(reply.body)["headers"])
        assert "\r" not in headers["x-fold"] and "\n" not in headers["x-fold"]
    else:
        assert reply.status == 400


def test_duplicate_host_and_unknown_transfer_coding_are_refused(gateway: GatewayProcess) -> None:
    twice = raw_request(gateway.port, b"GET /public/h HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
    assert twice.status == 400
    coding = raw_request(
        gateway.port,
        b"POST /public/te HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    )
    assert coding.status in (400, 501)


def test_upstream_response_header_with_nul_is_502(gateway: GatewayProcess) -> None:
    reply = raw_request(gateway.port, get(b"/evil/x"))
    assert reply.status == 502
    assert b"\x00" not in reply.raw


# ---- slow clients ----------------------------------------------------------------------------


def test_slow_headers_are_cut_off(gateway: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /public/slow HTTP/1.1\r\nhost: gw\r\n")  # never finished
        started = time.monotonic()
        data = closed_within(sock, 15)
    assert data is not None, "connection still open after 15 s"
    assert time.monotonic() - started < 15


def test_slow_body_is_408(gateway: GatewayProcess, upstream: UpstreamServer) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /public/slowbody HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\n0123456789"
        )
        data = closed_within(sock, 15)
    assert data is not None
    assert data.startswith(b"HTTP/1.1 408")
    assert not any("slowbody" in t for t in targets_seen(upstream))
