"""Quart's defaults would cap in-process upstreams silently (docs/known-defects.md); the
gateway lifts them.

Driven at the ASGI level in-process: a blueprint that streams for longer than a response
timeout. The control (a short RESPONSE_TIMEOUT put back) shows the harness does see a cut.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.config import load_config
from gateway.inprocess import load_apps
from tests.support.asgi_scope import http_scope

BLUEPRINT = """
import asyncio
from quart import Blueprint

blueprint = Blueprint("slow", __name__)


@blueprint.get("/stream")
async def stream():
    async def pieces():
        for i in range(5):
            await asyncio.sleep(0.15)
            yield b"piece%d;" % i
    return pieces(), 200


@blueprint.route("/opts", methods=["GET"])
async def opts():
    return "get only"
"""


def build(tmp_path: Path) -> Any:
    (tmp_path / "slow_app.py").write_text(BLUEPRINT)
    config = tmp_path / "gw.toml"
    config.write_text(
        '[upstreams.slow]\napp = "slow_app:blueprint"\n[[routes]]\npath = "/"\nupstream = "slow"\n'
    )
    loaded = load_config(config)
    return create_app(loaded, apps=load_apps(loaded))


async def call(app: Any, method: str, path: str) -> list[dict[str, Any]]:
    scope = {
        **http_scope(path.encode(), method=method, client=("127.0.0.1", 5000)),
        "asgi": {"version": "3.0"},  # and the rest of what a server hands a Quart app
        "root_path": "",
        "server": ("127.0.0.1", 8080),
        "extensions": {},
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    first = True
    forever = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await forever.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def body_and_end(sent: list[dict[str, Any]]) -> tuple[bytes, bool]:
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    data = b"".join(m.get("body", b"") for m in bodies)
    ended = any(not m.get("more_body", False) for m in bodies)
    return data, ended


def blueprint_app(app: Any) -> Any:
    """The Quart app create_app made for the blueprint upstream (it serves it)."""
    return app.extensions["quartgate"].apps["slow"].asgi


async def test_stream_longer_than_quarts_response_timeout_is_not_cut(tmp_path: Path) -> None:
    app = build(tmp_path)
    for quart in (app, blueprint_app(app)):
        assert quart.config["RESPONSE_TIMEOUT"] is None
        assert quart.config["MAX_CONTENT_LENGTH"] is None
    data, ended = body_and_end(await call(app, "GET", "/stream"))
    assert data == b"piece0;piece1;piece2;piece3;piece4;"
    assert ended


async def test_control_a_short_response_timeout_does_cut(tmp_path: Path) -> None:
    app = build(tmp_path)
    blueprint_app(app).config["RESPONSE_TIMEOUT"] = 0.2  # Quart's 60 s default, sooner
    data, ended = body_and_end(await call(app, "GET", "/stream"))
    assert not ended
    assert len(data) < len(b"piece0;") * 5


async def test_options_reaches_the_blueprint_not_quarts_automatic_reply(tmp_path: Path) -> None:
    app = build(tmp_path)
    sent = await call(app, "OPTIONS", "/opts")
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 405  # the blueprint has no OPTIONS; Quart would have said 200
