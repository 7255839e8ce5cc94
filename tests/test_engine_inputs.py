"""Bytes that are not HTTP, and a fractional keep-alive timeout, against each engine: the
same answer and the same timer whichever engine serves (gateway/server/uvicorn_engine.py
makes uvicorn's match Hypercorn's)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable

from tests.support.edge import closed_within, raw_request, read_response
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

CONFIG = """
[upstreams.main]
targets = ["{upstream}"]

[[routes]]
path = "/"
upstream = "main"
"""

Start = Callable[..., GatewayProcess]


def client_hello() -> bytes:
    """The first bytes a TLS client sends: a real ClientHello, from Python's ssl module."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="gw.example")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and hello[5:6] == b"\x01"  # a handshake record: ClientHello
    return hello


def test_a_tls_client_hello_on_a_plain_port_is_a_json_400(
    make_gateway: Start, upstream: UpstreamServer, engine: str
) -> None:
    """Not HTTP at all: malformed (400), as Hypercorn answers; uvicorn said 501, as if a
    method it did not know had been sent."""
    gateway = make_gateway(CONFIG.format(upstream=upstream.url), engine=engine)
    seen = len(upstream.requests)
    response = raw_request(gateway.port, client_hello())
    assert response.status == 400, response.raw[:200]
    assert response.header("content-type") == "application/json"
    assert response.header("connection") == "close"
    assert json.loads(response.body)["error"] == "bad_request"
    assert len(upstream.requests) == seen
    # A well-formed method token nobody knows stays 501, on the next connection too.
    brew = raw_request(gateway.port, b"BREW /x HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert brew.status == 501, brew.raw[:200]
    assert json.loads(brew.body)["error"] == "method_not_implemented"
    assert len(upstream.requests) == seen


def test_a_fractional_keep_alive_timeout_keeps_connections_alive_that_long(
    make_gateway: Start, upstream: UpstreamServer, engine: str
) -> None:
    """keep_alive_timeout = 0.5: a second request right after the first is served on the
    same connection (uvicorn got int(0.5) = 0 and closed after every response), and an
    idle connection is closed no sooner than 0.5 s after its last response."""
    gateway = make_gateway(
        CONFIG.format(upstream=upstream.url),
        engine=engine,
        server_config="graceful_timeout = 5.0\nkeep_alive_timeout = 0.5\n",
    )
    request = b"GET /keep HTTP/1.1\r\nhost: gw\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        first = read_response(sock)
        sock.sendall(request)
        sent = time.monotonic()  # the idle timer starts after this request's response
        second = read_response(sock)
        data = closed_within(sock, 30.0)
        closed = time.monotonic()
    assert first.startswith(b"HTTP/1.1 200"), first[:200]
    assert second.startswith(b"HTTP/1.1 200"), second[:200]
    assert b"connection: close" not in second.lower()
    assert data == b"", data  # closed by the idle timer: no response, no refusal
    assert closed - sent >= 0.5
