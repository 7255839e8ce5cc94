"""The WSGI adapter (gateway/pipeline/wsgi.py) driven directly, with a stub client: the
cases a real gateway cannot be steered into on cue (a request waiting in the queue, a
request cancelled by its server) and the environ and ``wsgi.input`` details. Through a real
gateway on each engine: tests/test_inprocess_wsgi_pool.py and tests/test_inprocess_apps.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.pipeline.inprocess_dispatch import queue_wait
from gateway.pipeline.wsgi import AppBusy, Input, WSGIAdapter, environ_of
from gateway.state import RouteRuntime
from routes.model import Route, RouteSpec
from tests.support.asgi_scope import http_scope
from upstreams.retry import RetryPolicy

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class StubClient:
    """The server side of one request: the body in ``pieces``, then nothing until
    :meth:`leave`; what the app sent is in ``sent``."""

    def __init__(self, pieces: tuple[bytes, ...] = (b"",)) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for index, piece in enumerate(pieces):
            more = index < len(pieces) - 1
            self.inbox.put_nowait({"type": "http.request", "body": piece, "more_body": more})
        self.sent: list[dict[str, Any]] = []
        self.body_seen = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))
        if message["type"] == "http.response.body" and message.get("body"):
            self.body_seen.set()

    def leave(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


class Gate:
    """A WSGI app whose ``/block`` holds its thread until :meth:`open`; ``/stream`` yields
    forever and records its ``finally``; anything else answers ``ok``."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        self.calls += 1
        path = environ["PATH_INFO"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        if path == "/block":
            self.entered.set()
            self.gate.wait(10)
            return iter([b"unblocked"])
        if path == "/stream":
            return self._stream()
        return iter([b"ok"])

    def _stream(self) -> Iterator[bytes]:
        try:
            while True:
                yield b"tick\n"
        finally:
            self.closed.set()


async def until(probe: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not probe():
            await asyncio.sleep(0.005)


def serve(adapter: WSGIAdapter, client: StubClient, path: str, wait: float = 30.0) -> Any:
    scope = http_scope(path.encode())
    return asyncio.ensure_future(adapter.serve(scope, client.receive, client.send, wait))


async def test_a_request_waits_in_the_queue_and_runs_once_a_thread_is_free() -> None:
    app = Gate()
    adapter = WSGIAdapter(app, threads=1, queue_timeout=30.0)
    first, second = StubClient(), StubClient()
    blocked = serve(adapter, first, "/block")
    await asyncio.to_thread(app.entered.wait, 10)
    queued = serve(adapter, second, "/hello")
    await until(lambda: adapter.waiting == 1)
    assert app.calls == 1  # the second request is not in a thread yet
    app.gate.set()
    await asyncio.gather(blocked, queued)
    assert (first.status, first.body, second.status, second.body) == (
        200, b"unblocked", 200, b"ok",
    )  # fmt: skip


async def test_a_request_that_waits_longer_than_its_wait_is_refused_without_running() -> None:
    app = Gate()
    adapter = WSGIAdapter(app, threads=1, queue_timeout=30.0)
    blocked = serve(adapter, StubClient(), "/block")
    await asyncio.to_thread(app.entered.wait, 10)
    late = StubClient()
    with pytest.raises(AppBusy) as refused:
        await serve(adapter, late, "/hello", wait=0.1)
    assert refused.value.waited == 0.1
    assert (app.calls, late.sent) == (1, [])  # the app never saw it; nothing was sent
    app.gate.set()
    await blocked


async def test_a_client_that_leaves_while_queued_never_reaches_the_app() -> None:
    app = Gate()
    adapter = WSGIAdapter(app, threads=1, queue_timeout=30.0)
    blocked = serve(adapter, StubClient(), "/block")
    await asyncio.to_thread(app.entered.wait, 10)
    gone = StubClient()
    queued = serve(adapter, gone, "/hello")
    await until(lambda: adapter.waiting == 1)
    gone.leave()
    app.gate.set()
    await asyncio.gather(blocked, queued)
    assert (app.calls, gone.sent) == (1, [])
    after = StubClient()
    await serve(adapter, after, "/hello")  # and the thread was handed on
    assert after.body == b"ok"


async def test_a_cancelled_request_closes_its_iterator_and_its_thread_is_free_after() -> None:
    """A server that cancels the request's task (a shutdown) instead of saying
    ``http.disconnect``: the thread stops at its next piece, and only then is it free."""
    app = Gate()
    adapter = WSGIAdapter(app, threads=1, queue_timeout=30.0)
    streaming = StubClient()
    task = serve(adapter, streaming, "/stream")
    await streaming.body_seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(app.closed.wait, 10)
    after = StubClient()
    await serve(adapter, after, "/hello")
    assert after.body == b"ok"


async def test_the_route_timeout_shortens_the_wait_for_a_thread() -> None:
    adapter = WSGIAdapter(Gate(), threads=1, queue_timeout=5.0)
    route = Route(RouteSpec("r", "/flask", "flask"), 0)

    def runtime(timeout: float | None) -> RouteRuntime:
        retry = None if timeout is None else RetryPolicy(None, timeout)
        return RouteRuntime(route, None, False, False, retry=retry)

    assert queue_wait(runtime(None), adapter) == 5.0  # no deadline: the upstream's wait
    assert queue_wait(runtime(0.0), adapter) == 5.0
    assert queue_wait(runtime(0.2), adapter) == 0.2  # the route's deadline, shorter
    assert queue_wait(runtime(30.0), adapter) == 5.0


async def test_wsgi_input_reads_lines_and_sizes_across_pieces() -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        body = environ["wsgi.input"]
        parts = [body.readline(), body.read(3), body.readline(2), body.readline(), body.read()]
        start_response("200 OK", [])
        return [json.dumps([p.decode() for p in parts]).encode()]

    adapter = WSGIAdapter(app, threads=1, queue_timeout=5.0)
    client = StubClient((b"ab\ncd", b"efg", b"h\nij", b"k"))
    await serve(adapter, client, "/")
    assert json.loads(client.body) == ["ab\n", "cde", "fg", "h\n", "ijk"]


def test_the_environ_drops_underscored_headers_and_joins_cookies() -> None:
    scope = http_scope(
        b"/site/page",
        headers=[
            (b"host", b"gw"),
            (b"x-forwarded-for", b"192.0.2.1"),
            (b"x_forwarded_for", b"203.0.113.9"),  # would overwrite the one above
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"content-type", b"text/plain"),
        ],
    )
    scope["root_path"] = "/site"
    environ = environ_of(scope, Input.__new__(Input))
    assert environ["HTTP_X_FORWARDED_FOR"] == "192.0.2.1"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/site", "/page")
