"""Real web apps of each kind, for tests/test_inprocess_apps.py and the bench: a Flask app
(WSGI), a Starlette app (ASGI, with a lifespan and a WebSocket), and a bare ASGI callable.

Each answers the same 100-byte ``/hundred`` that loadtests/inprocess_bench.py measures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from flask import Flask, Response, request, stream_with_context, url_for
from quart import Blueprint as QuartBlueprint
from quart import request as quart_request
from quart import url_for as quart_url_for
from quart import websocket as quart_websocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

HUNDRED = b"h" * 99 + b"\n"

# ---- Flask (WSGI) --------------------------------------------------------------------------

flask_app = Flask("flask_upstream")


@flask_app.get("/hundred")
def flask_hundred() -> Response:
    return Response(HUNDRED, content_type="text/plain")


@flask_app.get("/hello")
def flask_hello() -> dict[str, Any]:
    return {
        "url": url_for("flask_hello"),
        "external": url_for("flask_hello", _external=True),
        "script_name": request.script_root,
        "path": request.path,
        "request_id": request.headers.get("x-request-id"),
        "query": request.query_string.decode(),
    }


@flask_app.post("/echo")
def flask_echo() -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    while chunk := request.stream.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return {"length": size, "sha256": digest.hexdigest()}


@flask_app.get("/stream")
def flask_stream() -> Response:
    count = int(request.args.get("n", "5"))

    @stream_with_context
    def chunks() -> Iterator[bytes]:
        for i in range(count):
            yield f"chunk {i}\n".encode()

    return Response(chunks(), content_type="text/plain")


@flask_app.get("/block")
def flask_block() -> str:
    marker = request.args.get("marker")
    if marker:  # tells the test this handler is running (one byte per request)
        with open(marker, "a") as file:
            file.write("x")
    release = request.args.get("release")
    deadline = time.monotonic() + 10.0
    # A blocking handler: it holds one of the pool's threads until the test releases it.
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    if not release:
        time.sleep(1.0)
    return "unblocked"


@flask_app.get("/fail")
def flask_fail() -> str:
    raise RuntimeError("a bug in the app")


@flask_app.get("/endless")
def flask_endless() -> Response:
    """A stream that never ends by itself: only the server closing its iterator stops it.
    ``started`` gets one byte when the generator begins, ``closed`` one when its ``finally``
    runs (``GeneratorExit`` at its yield: the iterator was closed)."""
    started = request.args["started"]
    closed = request.args["closed"]

    @stream_with_context
    def chunks() -> Iterator[bytes]:
        with open(started, "a") as file:
            file.write("x")
        try:
            while True:
                yield b"tick\n"
                time.sleep(0.01)
        finally:
            with open(closed, "a") as file:
                file.write("x")

    return Response(chunks(), content_type="text/plain")


# ---- Starlette (ASGI) -----------------------------------------------------------------------


async def st_hundred(request: Request) -> PlainTextResponse:
    return PlainTextResponse(HUNDRED)


async def st_hello(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "url": str(request.url_for("hello")),
            "root_path": request.scope.get("root_path", ""),
            "path": request.url.path,
            "request_id": request.headers.get("x-request-id"),
            "started": bool(getattr(request.state, "started", False)),
        }
    )


async def st_echo(request: Request) -> JSONResponse:
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"length": size, "sha256": digest.hexdigest()})


async def st_stream(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("n", "5"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def st_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    async for message in websocket.iter_text():
        await websocket.send_text(f"starlette: {message}")


@contextlib.asynccontextmanager
async def st_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    yield {"started": True}


starlette_app = Starlette(
    routes=[
        Route("/hundred", st_hundred),
        Route("/hello", st_hello, name="hello"),
        Route("/echo", st_echo, methods=["POST"]),
        Route("/stream", st_stream),
        WebSocketRoute("/ws", st_ws),
    ],
    lifespan=st_lifespan,
)

# ---- a bare ASGI callable -------------------------------------------------------------------


async def bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan: the gateway serves it without
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"100")],
        }
    )
    await send({"type": "http.response.body", "body": HUNDRED})


# ---- a Quart blueprint that builds URLs (the issue-23 shop) -----------------------------

shop = QuartBlueprint("shop", __name__)


@shop.get("/")
async def shop_index() -> dict[str, Any]:
    request = quart_request
    return {
        "self": quart_url_for("shop.shop_index"),
        "path": request.path,
        "root": request.root_path,
    }


@shop.get("/items/<int:n>")
async def shop_item(n: int) -> dict[str, Any]:
    return {
        "self": quart_url_for(".shop_item", n=n),
        "index": quart_url_for("shop.shop_index"),
        "path": quart_request.path,
        "root": quart_request.root_path,
    }


@shop.websocket("/ws")
async def shop_ws() -> None:
    while True:
        message = await quart_websocket.receive()
        await quart_websocket.send(f"shop: {message}")


def create_flask_app() -> Flask:
    """A factory: ``app = "module:create_flask_app"`` calls it once."""
    return flask_app


# ---- an ASGI app that holds the event loop (load shedding, tests/test_overload.py) ---------


async def loop_blocker(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Blocks the worker's event loop for ``?s=`` seconds, as a CPU-bound handler would."""
    if scope["type"] != "http":
        return
    query = scope.get("query_string", b"").decode()
    seconds = float(query.partition("s=")[2] or "0.5")
    time.sleep(seconds)  # on purpose: nothing else in the worker runs meanwhile
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"blocked"})
