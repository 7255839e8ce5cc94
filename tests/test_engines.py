"""What hypercorn.toml and [gateway] say about client connections means the same on each
engine: the idle and header timeouts, the head cap, the per-connection request cap."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.edge import closed_within, read_response
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

CONFIG = """
[gateway]
header_timeout = {header_timeout}

[upstreams.main]
targets = ["{upstream}"]

[[routes]]
path = "/"
upstream = "main"
"""

Start = Callable[..., GatewayProcess]


@pytest.fixture
def start(make_gateway: Start, upstream: UpstreamServer, engine: str) -> Iterator[Start]:
    def run(server: str, header_timeout: float = 30.0) -> GatewayProcess:
        text = CONFIG.format(upstream=upstream.url, header_timeout=header_timeout)
        return make_gateway(text, engine=engine, server_config=server)

    yield run


# Timeouts are proven without measuring the machine: the connection is closed, by the
# timer the response names, not before the configured time has passed since it opened (a
# lower bound: a slow machine only adds to it), and within a wait that is far longer than
# that time yet far shorter than the 75 s keep_alive_timeout that would otherwise close it.
WAIT = 30.0


def test_a_slow_head_gets_408_after_header_timeout(start: Start) -> None:
    gateway = start("keep_alive_timeout = 75.0\n", header_timeout=1.0)
    opened = time.monotonic()  # before the connection exists: no timer of its starts earlier
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: gw\r\n")  # never the blank line
        data = closed_within(sock, WAIT)
    closed = time.monotonic()
    assert data is not None and data.startswith(b"HTTP/1.1 408"), data
    body = json.loads(data.partition(b"\r\n\r\n")[2])
    # The server refused it before the gateway gave it an id: no empty request_id.
    assert body == {"error": "request_header_timeout", "detail": body["detail"]}
    assert closed - opened >= 1.0


def test_a_reloaded_header_timeout_applies_to_new_heads(
    start: Start, upstream: UpstreamServer
) -> None:
    """``[gateway] header_timeout`` reaches the engine as a value a reload replaces: from
    30 s (which would never fire within WAIT) to 1 s, on each engine."""
    gateway = start("keep_alive_timeout = 75.0\n", header_timeout=30.0)
    gateway.config.write_text(CONFIG.format(upstream=upstream.url, header_timeout=1.0))
    gateway.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "config reloaded" not in gateway.logs():
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.02)
    opened = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nhost: gw\r\n")  # never the blank line
        data = closed_within(sock, WAIT)
    assert data is not None and data.startswith(b"HTTP/1.1 408"), data
    assert b"no complete request head within 1 s" in data  # the new value, in its words
    assert time.monotonic() - opened >= 1.0


def test_an_idle_connection_is_closed_after_keep_alive_timeout(start: Start) -> None:
    gateway = start("keep_alive_timeout = 1.0\n")  # header_timeout stays 30 s: not it
    opened = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        data = closed_within(sock, WAIT)  # sends nothing at all
    closed = time.monotonic()
    assert data == b"", data  # closed without a response: the idle timer, not a refusal
    assert closed - opened >= 1.0


def test_a_head_still_incomplete_past_the_cap_is_431(start: Start) -> None:
    gateway = start("h11_max_incomplete_size = 4096\n")
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: gw\r\nx-big: " + b"a" * 3000)
        sock.sendall(b"a" * 3000)  # 6 KiB and no end of head yet, however it arrives
        data = closed_within(sock, 10)
    assert data is not None and data.startswith(b"HTTP/1.1 431"), data


def test_keep_alive_max_requests_closes_after_the_last(start: Start) -> None:
    gateway = start("keep_alive_max_requests = 2\n")
    request = b"GET /x HTTP/1.1\r\nhost: gw\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        first = read_head(sock)
        sock.sendall(request)
        second = read_head(sock)
    assert b"connection: close" not in first.lower()
    assert b"connection: close" in second.lower()


def read_head(sock: socket.socket) -> bytes:
    """A response head; its (small) body is read and dropped."""
    return read_response(sock).partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    "tail", [b"\r\n", b"GARBAGE\r\n\r\n", b"GET /smuggled HTTP/1.1\r\nx: \x01"]
)
def test_garbage_after_a_request_waits_for_its_response(
    start: Start, upstream: UpstreamServer, tail: bytes
) -> None:
    """The request before the garbage gets its whole response first; the refusal (if any)
    comes after it, then the connection closes, and nothing after the garbage runs."""
    # An unfinished tail is closed by a timer (idle or head), not a refusal: short ones,
    # so the test does not wait them out; which one closes it does not matter here.
    gateway = start("keep_alive_timeout = 1.0\n", header_timeout=1.0)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nhost: gw\r\n\r\n" + tail)
        data = closed_within(sock, WAIT)
    assert data is not None and data.startswith(b"HTTP/1.1 200"), data
    assert b"/first" in data.partition(b"\r\n\r\n")[2]
    assert not any("smuggled" in r.target for r in upstream.requests)


def test_a_parser_refusal_leaves_a_log_line(start: Start) -> None:
    gateway = start("keep_alive_timeout = 5.0\n")
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nhost: gw\r\nx-a: b\r\n c\r\n\r\n")  # obs-fold
        data = closed_within(sock, 10)
    assert data is not None and data.startswith(b"HTTP/1.1 400"), data
    deadline = time.monotonic() + 5
    while "400" not in gateway.logs():
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.05)


def test_the_status_line_carries_the_reason_phrase(start: Start) -> None:
    """``HTTP/1.1 200 OK``, as nginx and Envoy write it; Hypercorn alone wrote
    ``HTTP/1.1 200 `` (gateway/server/hypercorn_patches.py), its own refusals included."""
    gateway = start("keep_alive_timeout = 5.0\n")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nhost: gw\r\n\r\n")
        ok = read_head(sock)
        sock.sendall(b"GET /b HTTP/1.1\r\nhost: gw\r\nhost: other\r\n\r\n")  # two Hosts
        refused = read_head(sock)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /c HTTP/1.1\r\nhost: gw\r\nbad header\r\n\r\n")  # the parser's
        parser = closed_within(sock, WAIT)
    assert ok.split(b"\r\n")[0] == b"HTTP/1.1 200 OK", ok
    assert refused.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request", refused
    assert parser is not None and parser.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
