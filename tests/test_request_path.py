"""The request path's seams: stages built once per snapshot, the proxy handing the request
path's own coroutine to the server (no frame of its own), the route-match stage (404, 405,
its bounded Host cache) and dispatch by route, driven with a stub receive and send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.asgi_types import Message, Receive, Scope, Send
from gateway.config import parse_config
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.pipeline import route_match
from gateway.pipeline.request_path import RequestPath
from gateway.pipeline.route_match import RouteMatch
from gateway.proxy import Proxy
from gateway.state import GatewayState, build_state
from tests.support.asgi_scope import http_scope

CONFIG: dict[str, Any] = {
    "upstreams": {"api": {"targets": ["http://127.0.0.1:9"]}},
    "routes": [
        {"name": "orders", "path": "/orders", "upstream": "api", "methods": ["GET"]},
        {"name": "shop", "path": "/shop", "upstream": "api", "host": "shop.example"},
    ],
}


def state() -> GatewayState:
    return build_state(parse_config(CONFIG))


def scope_of(path: str, method: str = "GET", host: bytes = b"gw") -> dict[str, Any]:
    return http_scope(path.encode(), method=method, headers=[(b"host", host)])


async def served(proxy: Proxy, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

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


async def _never() -> Message:
    raise AssertionError("not read")


async def _discard(message: Message) -> None:
    raise AssertionError("nothing is sent")
