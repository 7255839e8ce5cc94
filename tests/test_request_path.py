"""The request path's seams: stages built once per snapshot, the proxy handing the request
path's own coroutine to the server (no frame of its own), the route-match stage (404, 405,
its bounded Host cache) and dispatch by route, driven with a stub receive and send; and
WebSocket handshakes walking the same path over the same stage objects (the same 405 with
``Allow``, the same log levels)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

import pytest

from gateway.asgi_types import Message, Receive, Scope, Send
from gateway.config import parse_config
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.pipeline import route_match
from gateway.pipeline.inprocess_dispatch import InProcessApps
from gateway.pipeline.request_path import RequestPath, Stages, request_stages
from gateway.pipeline.route_match import RouteMatch
from gateway.proxy import Proxy
from gateway.state import GatewayState, RouteRuntime, build_state
from gateway.websocket.handshake import as_request, handshake_stages
from gateway.websocket.sessions import Sessions
from tests.support.asgi_scope import http_scope

CONFIG: dict[str, Any] = {
    "upstreams": {"api": {"targets": ["http://127.0.0.1:9"]}},
    "routes": [
        {"name": "orders", "path": "/orders", "upstream": "api", "methods": ["GET"]},
        {"name": "shop", "path": "/shop", "upstream": "api", "host": "shop.example"},
        {"name": "posts", "path": "/posts", "upstream": "api", "methods": ["POST"]},
        {"name": "live", "path": "/live", "upstream": "api", "websocket": True},
    ],
}


def state() -> GatewayState:
    return build_state(parse_config(CONFIG))


def scope_of(path: str, method: str = "GET", host: bytes = b"gw") -> dict[str, Any]:
    return http_scope(path.encode(), method=method, headers=[(b"host", host)])


def handshake_of(path: str) -> dict[str, Any]:
    """A WebSocket scope as a server hands it to the gateway (both engines have the
    ``websocket.http.response`` extension)."""
    scope = http_scope(path.encode(), headers=[(b"host", b"gw")])
    del scope["method"], scope["http_version"]
    scope.update(type="websocket", scheme="ws", subprotocols=[])
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


async def served(proxy: Proxy | RequestPath, scope: Scope) -> list[Message]:
    sent: list[Message] = []
    first = "websocket.connect" if scope["type"] == "websocket" else "http.request"

    async def receive() -> Message:
        return {"type": first, "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    if isinstance(proxy, RequestPath):
        await proxy.handle(scope, receive, send)
    else:
        await proxy(scope, receive, send)
    return sent


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"quart"})


def test_the_stages_are_built_once_per_snapshot() -> None:
    first = state()
    proxy = Proxy(app, first)
    path = proxy._path
    assert proxy.state is first and path.state is first
    assert proxy._path is path  # reading the state builds nothing
    second = state()
    proxy.state = second  # a reload
    assert proxy._path is not path and proxy._path.state is second
    assert path.state is first  # requests already on the old path finish on it


async def test_the_proxy_returns_the_request_paths_own_coroutine() -> None:
    proxy = Proxy(app, state())
    coroutine = proxy(scope_of("/none"), _never, _discard)
    try:
        assert coroutine.cr_code is RequestPath.handle.__code__  # type: ignore[attr-defined]
    finally:
        coroutine.close()  # type: ignore[attr-defined]


async def test_the_lifespan_goes_to_the_app_untouched() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    await Proxy(lifespan_app, state())({"type": "lifespan"}, _never, _discard)
    assert seen == ["lifespan"]


async def test_an_unknown_path_is_a_json_404_with_the_request_id() -> None:
    sent = await served(Proxy(app, state()), scope_of("/nowhere"))
    start, body = sent
    assert start["status"] == 404
    headers = dict(start["headers"])
    document = json.loads(body["body"])
    assert document["error"] == "route_not_found"
    assert headers[b"x-request-id"] == document["request_id"].encode()


async def test_a_path_with_another_method_is_a_405_with_allow() -> None:
    sent = await served(Proxy(app, state()), scope_of("/orders/1", method="DELETE"))
    assert sent[0]["status"] == 405
    assert (b"allow", b"GET, HEAD") in sent[0]["headers"]  # GET allows HEAD


def test_the_route_match_stage_sets_the_route_and_matches_on_the_host() -> None:
    snapshot = state()
    stage = RouteMatch(snapshot.table, snapshot.runtimes)
    ctx = RequestContext(scope_of("/shop/x"), b"id", b"SHOP.example:8080", 0.0)
    assert stage.match(ctx) is snapshot.runtimes["shop"]
    assert ctx.route is not None and ctx.route.name == "shop"
    other = RequestContext(scope_of("/shop/x"), b"id", b"other.example", 0.0)
    with pytest.raises(GatewayError) as caught:
        stage.match(other)
    assert caught.value.status == 404


def test_the_host_cache_never_grows_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_match, "HOSTS_CACHED", 8)
    snapshot = state()
    stage = RouteMatch(snapshot.table, snapshot.runtimes)
    for number in range(50):
        ctx = RequestContext(scope_of("/orders"), b"id", b"h%d.example" % number, 0.0)
        stage.match(ctx)
        assert len(stage._hosts) <= 8
    ctx = RequestContext(scope_of("/shop"), b"id", b"shop.example", 0.0)
    assert stage.match(ctx) is snapshot.runtimes["shop"]


# ---- WebSocket handshakes: the same path ---------------------------------------------------


async def test_a_handshake_is_walked_by_the_request_paths_own_coroutine() -> None:
    proxy = Proxy(app, state())
    coroutine = proxy(handshake_of("/live"), _never, _discard)
    try:
        assert coroutine.cr_code is RequestPath.handle.__code__  # type: ignore[attr-defined]
    finally:
        coroutine.close()  # type: ignore[attr-defined]


def test_a_handshake_goes_through_the_request_paths_stage_objects() -> None:
    snapshot = state()
    proxy = Proxy(app, snapshot)
    request, handshake = proxy._path, proxy._handshakes
    assert handshake.state is snapshot
    # The same objects, not copies built alike.
    assert handshake.normalise is request.normalise
    assert handshake.identify is request.identify
    assert handshake.to_app is request.to_app
    assert handshake.match_route.__self__._match is request.match_route  # type: ignore[attr-defined]
    assert handshake.check_edge.__self__._edge is snapshot.edge.handshakes  # type: ignore[attr-defined]
    # What differs is named: every other stage of the handshake is the request's.
    differ = {"check_edge", "match_route", "forward", "errors", "observers"}
    for name in {field.name for field in fields(Stages)} - differ:
        assert getattr(handshake.stages, name) is getattr(request.stages, name), name
    proxy.state = state()  # a reload replaces both paths at once
    assert proxy._handshakes is not handshake and proxy._handshakes.state is proxy.state


async def test_a_stage_replaced_in_the_request_path_is_seen_by_both_scope_types() -> None:
    snapshot = state()
    seen: list[tuple[str, str, str]] = []
    stages = request_stages(snapshot, InProcessApps(app))
    match = stages.match_route

    def recorded(ctx: RequestContext) -> RouteRuntime:
        scope = ctx.scope
        seen.append((scope["type"], scope["method"], scope["path"]))
        return match(ctx)

    stages = replace(stages, match_route=recorded)
    request = RequestPath(snapshot, stages)
    handshake = RequestPath(snapshot, handshake_stages(snapshot, stages, Sessions()))
    http_sent = await served(request, scope_of("/nowhere"))
    ws_sent = await served(handshake, as_request(handshake_of("/nowhere")))
    assert seen == [("http", "GET", "/nowhere"), ("websocket", "GET", "/nowhere")]
    assert http_sent[0]["type"] == "http.response.start"
    assert ws_sent[0]["type"] == "websocket.http.response.start"
    assert http_sent[0]["status"] == ws_sent[0]["status"] == 404


async def test_a_handshake_to_a_path_without_get_is_a_405_with_allow() -> None:
    http_sent = await served(Proxy(app, state()), scope_of("/posts"))
    ws_sent = await served(Proxy(app, state()), handshake_of("/posts"))
    start, body = ws_sent
    assert start["type"] == "websocket.http.response.start"
    assert start["status"] == 405
    assert (b"allow", b"POST") in start["headers"]
    assert json.loads(body["body"])["error"] == "method_not_allowed"
    assert http_sent[0]["status"] == 405 and (b"allow", b"POST") in http_sent[0]["headers"]


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The gateway's log records (its logger does not propagate once configured)."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = caught.append  # type: ignore[method-assign]
    logger = logging.getLogger("quartgate")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield caught
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize(
    ("path", "status", "level"),
    [
        ("/live", 502, logging.WARNING),  # nothing listens on the upstream's port
        ("/posts", 405, logging.INFO),
        ("/nowhere", 404, logging.INFO),  # no access log: a client's 4xx is logged at info
    ],
)
async def test_a_refused_handshake_is_logged_at_the_level_of_the_same_refused_request(
    records: list[logging.LogRecord], path: str, status: int, level: int
) -> None:
    snapshot = state()
    proxy = Proxy(app, snapshot)
    try:
        http_sent = await served(proxy, scope_of(path))
        ws_sent = await served(proxy, handshake_of(path))
    finally:
        await snapshot.aclose()
    assert http_sent[0]["status"] == ws_sent[0]["status"] == status
    http_log, ws_log = (r for r in records if " -> " in r.getMessage())
    assert (http_log.levelno, ws_log.levelno) == (level, level)
    assert http_log.getMessage().startswith(f"GET {path} -> {status}")
    assert ws_log.getMessage().startswith(f"websocket GET {path} -> {status}")


async def test_a_route_without_websocket_answers_a_handshake_501_and_logs_a_warning(
    records: list[logging.LogRecord],
) -> None:
    sent = await served(Proxy(app, state()), handshake_of("/orders"))
    start, body = sent
    assert (start["status"], json.loads(body["body"])["error"]) == (
        501,
        "websocket_not_supported",
    )
    (line,) = (r for r in records if " -> " in r.getMessage())
    assert line.levelno == logging.WARNING  # a 5xx, as the HTTP path's 501s


async def _never() -> Message:
    raise AssertionError("not read")


async def _discard(message: Message) -> None:
    raise AssertionError("nothing is sent")
