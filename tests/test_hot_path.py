"""What the hot-path performance work must not change: strict upstream parsing, one Date and
one Server header, well-formed request ids."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from gateway.asgi_types import Message, Receive, Scope, Send
from gateway.config import parse_config
from gateway.edge.context import RequestContext
from gateway.edge.head import new_request_id
from gateway.pipeline.disconnect_watch import WATCH_AFTER
from gateway.proxy import Proxy
from gateway.state import build_state
from loadtests.servers import closing_sockets
from tests.support.asgi_scope import http_scope
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer
from upstreams.h1.connection import H1Connection
from upstreams.messages import UpstreamRequest, UpstreamResponse

CONFIG = """
[upstreams.mock]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "mock"
strip_prefix = true
"""


@pytest.fixture
def parse() -> Iterator[Callable[[bytes], H1Connection]]:
    """Feed a response head to a connection with no transport (pure parsing)."""
    loop = asyncio.new_event_loop()

    def feed(head: bytes) -> H1Connection:
        conn = H1Connection(loop)
        conn.begin(no_body=True)
        conn.data_received(head)
        return conn

    yield feed
    loop.close()


def test_header_lines_are_split_trimmed_and_lowercased(
    parse: Callable[[bytes], H1Connection],
) -> None:
    conn = parse(
        b"HTTP/1.1 200 OK\r\nX-A:  spaced value \t\r\nx-empty:\r\n"
        b"X-Obs: caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n"
    )
    assert conn._error is None
    assert conn._head == (
        200,
        [
            (b"x-a", b"spaced value"),
            (b"x-empty", b""),
            (b"x-obs", b"caf\xc3\xa9"),
            (b"content-length", b"0"),
        ],
    )


@pytest.mark.parametrize(
    "line",
    [
        b"bad name: x",  # space in the name
        b"x :y",  # space before the colon
        b": no name",
        b"caf\xc3\xa9: non-ASCII name",
        b"x-nul: a\x00b",
        b"x-cr: a\rb",
        b"no colon",
        b"content-length: \xd9\xa1",  # a non-ASCII digit
        b"content-length: +1",
        b"content-length: ",
    ],
)
def test_malformed_header_lines_are_protocol_errors(
    parse: Callable[[bytes], H1Connection], line: bytes
) -> None:
    conn = parse(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n\r\n")
    assert conn._head is None
    assert conn._error is not None and "invalid" in str(conn._error)


def test_a_hostile_header_line_is_rejected_without_backtracking(
    parse: Callable[[bytes], H1Connection],
) -> None:
    # Possessive quantifiers: 60 KB of spaces before a NUL is one linear pass, not 60 KB².
    conn = parse(b"HTTP/1.1 200 OK\r\nx:" + b" " * 60_000 + b"a\x00\r\n\r\n")
    assert conn._head is None and conn._error is not None


def test_generated_request_ids_are_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        parsed = uuid.UUID(value.decode("ascii"))
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode("ascii") == value


def test_one_date_and_one_server_header_reach_the_client(
    mock_upstream: str, make_gateway: Callable[..., GatewayProcess]
) -> None:
    # The mock sends Date and Server as nginx does; Hypercorn adds its own to every response.
    gateway = make_gateway(CONFIG.format(upstream=mock_upstream))
    response = httpx.get(f"{gateway.url}/api/json")
    assert response.status_code == 200 and len(response.content) == 100
    names = [name.lower() for name, _ in response.headers.raw]
    assert names.count(b"date") == 1
    assert names.count(b"server") == 1
    assert uuid.UUID(response.headers["x-request-id"]).version == 4


def test_server_config_caches_hypercorns_response_headers() -> None:
    from hypercorn.config import Config

    from gateway.server import ServerConfig, load_server_config

    config = load_server_config(None)
    assert isinstance(config, ServerConfig)
    ours = config.response_headers("h11")
    hypercorns = Config.response_headers(config, "h11")
    # The same headers Hypercorn makes (the Date value may be a second apart).
    assert [name for name, _ in ours] == [name for name, _ in hypercorns] == [b"date", b"server"]
    assert ours[1] == hypercorns[1]
    assert parsedate_to_datetime(ours[0][1].decode()).tzinfo is not None
    ours.append((b"x-mutated", b"1"))  # callers own their copy
    assert len(config.response_headers("h11")) == 2


def test_a_connection_the_client_closed_mid_request_is_closed_by_the_gateway(
    upstream: UpstreamServer, make_gateway: Callable[..., GatewayProcess]
) -> None:
    # Hypercorn alone keeps it in CLOSE-WAIT until keep_alive_timeout (75 s): memory that
    # grows with the rate clients reconnect (gateway/server/app_loader.py).
    gateway = make_gateway(CONFIG.format(upstream=upstream.url))
    upstream.reset()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /api/slow?delay=0.3 HTTP/1.1\r\nhost: gw\r\n\r\n")
        deadline = time.monotonic() + 10
        while not upstream.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upstream.requests, "the request never reached the upstream"
    deadline = time.monotonic() + 20  # far below keep_alive_timeout
    while closing_sockets(gateway.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closing_sockets(gateway.port) == 0


# -- the request path in process, with a stub upstream: what a request costs ---------------


class _Finished:
    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []

    def request_finished(self, ctx: RequestContext) -> None:
        self.contexts.append(ctx)


def _proxy_with(send_upstream: Callable[[UpstreamRequest], Any]) -> tuple[Proxy, _Finished]:
    finished = _Finished()
    config = parse_config(
        {
            "upstreams": {"api": {"targets": ["http://127.0.0.1:9"]}},
            "routes": [{"name": "api", "path": "/api", "upstream": "api"}],
        }
    )
    state = build_state(config, (finished,))
    state.upstreams["api"].send = send_upstream  # type: ignore[method-assign]

    async def quart(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the proxied route never reaches Quart")

    return Proxy(quart, state), finished


async def _answer(request: UpstreamRequest) -> UpstreamResponse:
    async def no_more() -> AsyncIterator[bytes]:
        return
        yield b""

    async def aclose() -> None:
        return None

    return UpstreamResponse(200, [], no_more(), aclose, first=b"ok", complete=True)


def _scope() -> dict[str, Any]:
    return http_scope(b"/api/x")


async def test_a_fast_request_pays_a_timer_not_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, finished = _proxy_with(_answer)
    tasks: list[object] = []
    ensure_future = asyncio.ensure_future

    def counting(*args: Any, **kwargs: Any) -> Any:
        tasks.append(args[0])
        return ensure_future(*args, **kwargs)

    monkeypatch.setattr(asyncio, "ensure_future", counting)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    for _ in range(20):
        await proxy(_scope(), receive, send)
    await asyncio.sleep(WATCH_AFTER * 2)  # a timer left behind would fire by now
    assert tasks == []
    assert [c.status for c in finished.contexts] == [200] * 20


async def test_a_client_gone_while_the_upstream_is_slow_is_noticed_by_the_watch() -> None:
    upstream_cancelled = asyncio.Event()

    async def slow(request: UpstreamRequest) -> UpstreamResponse:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            upstream_cancelled.set()
            raise
        raise AssertionError("not reached")

    proxy, finished = _proxy_with(slow)
    messages = iter(
        [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        raise AssertionError("nobody is left to answer")

    started = time.monotonic()
    await asyncio.wait_for(proxy(_scope(), receive, send), 5)
    assert time.monotonic() - started < 2
    assert upstream_cancelled.is_set()
    (ctx,) = finished.contexts
    assert (ctx.status, ctx.error) == (499, "client_disconnected")


class _ServerCycle:
    """What both engines do with one request's receive and send: the body, then receive()
    waits on an event that the response's last body message sets, and says disconnect."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._body_given = False
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._event.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self._event.set()


async def test_a_watched_request_ends_its_watcher_without_cancelling_it_or_leaving_cycles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request in flight past WATCH_AFTER gets a watcher; when the response is complete
    the server's disconnect ends it, uncancelled, and nothing of the request is left for
    the cyclic collector (at 4,096 connections, cancelled watchers were 700k objects and a
    0.9 s full collection: loadtests/connections.py)."""

    async def slow_answer(request: UpstreamRequest) -> UpstreamResponse:
        await asyncio.sleep(WATCH_AFTER * 3)  # long enough to be watched
        return await _answer(request)

    proxy, finished = _proxy_with(slow_answer)
    watchers: list[asyncio.Future[Any]] = []
    ensure_future = asyncio.ensure_future

    def keeping(*args: Any, **kwargs: Any) -> Any:
        task = ensure_future(*args, **kwargs)
        watchers.append(task)
        return task

    monkeypatch.setattr(asyncio, "ensure_future", keeping)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        cycle = _ServerCycle()
        await proxy(_scope(), cycle.receive, cycle.send)
        (watcher,) = watchers  # the request was watched
        message = await asyncio.wait_for(watcher, 5)  # it ends by itself
        assert message == {"type": "http.disconnect"} and not watcher.cancelled()
        del watcher, watchers[:]
        gc.collect()
        left = {type(o).__name__ for o in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert [c.status for c in finished.contexts] == [200]
    assert cycle.sent[-1] == {"type": "http.response.body", "body": b"ok"}
    assert not left & {"DisconnectWatch", "CancelledError", "Task", "frame"}, left
