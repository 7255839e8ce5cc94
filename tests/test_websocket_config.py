"""The new keys: a route's ``websocket`` (bool or table) and an app upstream's ``threads``;
and how an in-process app's kind is detected. Pure logic, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from quart import Blueprint

from gateway.config import ConfigError, parse_config
from gateway.inprocess import ASGI, BLUEPRINT, WSGI, detect, mount_point
from gateway.websocket.limits import WebSocketSettings

BASE = {"upstreams": {"ws": {"targets": ["http://127.0.0.1:9"]}}}


def route(**keys: Any) -> dict[str, Any]:
    return {**BASE, "routes": [{"path": "/ws", "upstream": "ws", **keys}]}


def websocket(data: dict[str, Any]) -> WebSocketSettings | None:
    config = parse_config(data)
    return config.policies_of(config.routes[0]).websocket


def test_websocket_is_off_by_default_and_true_takes_every_default() -> None:
    assert websocket(route()) is None
    assert websocket(route(websocket=False)) is None
    assert websocket(route(websocket=True)) == WebSocketSettings(1048576, 300.0, 0.0, 10.0)


def test_a_websocket_table_sets_each_key() -> None:
    table = {"max_message_size": 1000, "idle_timeout": 5, "ping_interval": 2.5}
    assert websocket(route(websocket=table)) == WebSocketSettings(1000, 5.0, 2.5, 10.0)
    assert websocket(route(websocket={"enabled": False})) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("yes", "routes[0].websocket: must be true, false or a table"),
        ({"max_message_size": 0}, "routes[0].websocket.max_message_size: must be greater than 0"),
        ({"idle_timeout": -1}, "routes[0].websocket.idle_timeout: must not be negative"),
        ({"max_size": 10}, "routes[0].websocket.max_size: unknown key"),
        (
            {"ping_interval": "1"},
            "routes[0].websocket.ping_interval: must be a number, not a string",
        ),
    ],
)
def test_bad_websocket_values_are_named(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(route(websocket=value), "gw.toml")
    assert [str(p) for p in caught.value.problems] == [f"gw.toml: {problem}"]


def test_threads_of_an_app_upstream() -> None:
    config = parse_config(
        {"upstreams": {"site": {"app": "m:app", "threads": 3}}, "routes": [
            {"path": "/", "upstream": "site"}]}
    )  # fmt: skip
    assert config.app_upstreams["site"].threads == 3
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"upstreams": {"site": {"app": "m:app", "threads": 0}}, "routes": [
                {"path": "/", "upstream": "site"}]}, "gw.toml"
        )  # fmt: skip
    assert str(caught.value) == "gw.toml: upstreams.site.threads: must be greater than 0"


async def asgi_function(scope: Any, receive: Any, send: Any) -> None: ...


def wsgi_function(environ: Any, start_response: Any) -> list[bytes]:
    return []


class AsgiObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class WsgiObject:
    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []


def test_the_kind_of_an_app_is_detected() -> None:
    assert detect(Blueprint("b", __name__)) == BLUEPRINT
    assert detect(asgi_function) == ASGI
    assert detect(AsgiObject()) == ASGI
    assert detect(wsgi_function) == WSGI
    assert detect(WsgiObject()) == WSGI
    assert detect("not an app") is None
    assert detect(lambda scope: None) is None  # ASGI 2 (one argument) is not supported


@pytest.mark.parametrize(
    ("path", "segments", "mount"),
    [("/site/a/b", 1, "/site"), ("/site", 1, "/site"), ("/a/b/c", 2, "/a/b"), ("/x", 0, "")],
)
def test_mount_point_is_what_strip_prefix_strips(path: str, segments: int, mount: str) -> None:
    assert mount_point(path, segments) == mount
