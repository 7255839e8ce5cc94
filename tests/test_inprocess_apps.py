"""Any Python web app as an in-process upstream, through a real gateway process: a Flask app
(WSGI, on its own thread pool), a Starlette app (ASGI, with its lifespan and a WebSocket),
a bare ASGI callable and the existing Quart blueprint, side by side in one config, on each
engine."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import ENGINES, ROOT, GatewayProcess
from tests.support.ws_client import client, head_and_body, raw_handshake

APPS = "tests.support.inprocess_apps"
CONFIG = f"""
[gateway]
max_body_size = 1000000

[upstreams.flask]
app = "{APPS}:flask_app"
threads = 4

[upstreams.starlette]
app = "{APPS}:starlette_app"

[upstreams.bare]
app = "{APPS}:bare_asgi"

[upstreams.factory]
app = "{APPS}:create_flask_app"

[upstreams.hello]
app = "hello_app:blueprint"

[upstreams.shop]
app = "{APPS}:shop"

[[routes]]
path = "/flask"
upstream = "flask"
strip_prefix = true

[[routes]]
path = "/starlette"
upstream = "starlette"
strip_prefix = true
websocket = true

[[routes]]
path = "/flaskws"
upstream = "flask"
websocket = true

[[routes]]
path = "/bare"
upstream = "bare"

[[routes]]
path = "/factory"
upstream = "factory"
strip_prefix = true

[[routes]]
path = "/hello"
upstream = "hello"
strip_prefix = true

[[routes]]
path = "/shop2"
upstream = "shop"
strip_prefix = true
websocket = true
"""


@pytest.fixture(scope="module", params=ENGINES)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp(f"inprocess-{request.param}")
    (folder / "hello_app.py").write_text((ROOT / "examples" / "hello_app.py").read_text())
    path = folder / "gateway.toml"
    path.write_text(CONFIG)
    process = GatewayProcess(path, engine=str(request.param)).start()
    yield process
    process.stop()


def get(gateway: GatewayProcess, path: str, **kwargs: object) -> httpx.Response:
    return httpx.get(gateway.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


# ---- Flask (WSGI) ------------------------------------------------------------------------------


def test_flask_request_response_with_its_root_path(gateway: GatewayProcess) -> None:
    response = get(gateway, "/flask/hello?x=1", headers={"x-request-id": "flask-1"})
    assert response.status_code == 200
    assert response.json() == {
        "url": "/flask/hello",  # url_for knows where the app is mounted
        "external": f"http://127.0.0.1:{gateway.port}/flask/hello",
        "script_name": "/flask",
        "path": "/hello",
        "request_id": "flask-1",
        "query": "x=1",
    }
    assert response.headers["x-request-id"] == "flask-1"


def test_flask_reads_a_request_body_whole(gateway: GatewayProcess) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB, streamed in chunks
    response = httpx.post(
        gateway.url + "/flask/echo", content=iter([body[:100000], body[100000:]]), timeout=10
    )
    assert response.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_flask_streaming_response_arrives_in_pieces(gateway: GatewayProcess) -> None:
    with httpx.stream("GET", gateway.url + "/flask/stream?n=50", timeout=10) as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        text = b"".join(response.iter_bytes()).decode()
    assert text == "".join(f"chunk {i}\n" for i in range(50))


async def test_a_blocking_flask_handler_leaves_other_routes_fast(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    """Three requests block a thread each (of threads = 4) until the test releases them;
    meanwhile the Flask app's fourth thread, the ASGI app and the blueprint answer."""
    marker = tmp_path / "blocking"
    release = tmp_path / "release"
    params = {"marker": str(marker), "release": str(release)}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        blocked = [asyncio.ensure_future(http.get("/flask/block", params=params)) for _ in range(3)]
        async with asyncio.timeout(5):  # until all three handlers are in their sleep
            while not marker.exists() or len(marker.read_text()) < 3:
                await asyncio.sleep(0.01)
        fast = await asyncio.gather(
            http.get("/flask/hundred"), http.get("/starlette/hundred"), http.get("/hello/")
        )
        assert [r.status_code for r in fast] == [200, 200, 200]
        # Answered while all three handlers were still blocked: no timing involved.
        assert not any(task.done() for task in blocked)
        release.touch()
        assert [r.text for r in await asyncio.gather(*blocked)] == ["unblocked"] * 3


def test_a_flask_app_that_raises_is_a_500_from_flask(gateway: GatewayProcess) -> None:
    response = get(gateway, "/flask/fail")
    assert response.status_code == 500


async def test_a_wsgi_app_refuses_a_websocket_handshake_with_403(
    gateway: GatewayProcess,
) -> None:
    status, _, _ = head_and_body(await raw_handshake(gateway.port, "/flaskws/hello"))
    assert status == 403


def test_a_factory_is_called_once_and_served(gateway: GatewayProcess) -> None:
    assert get(gateway, "/factory/hundred").content == b"h" * 99 + b"\n"


def test_max_body_size_applies_to_in_process_apps(gateway: GatewayProcess) -> None:
    response = httpx.post(gateway.url + "/flask/echo", content=b"x" * 1000001, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_a_chunked_body_over_max_body_size_never_reaches_a_wsgi_app_as_complete(
    gateway: GatewayProcess,
) -> None:
    """Cut at the limit, the WSGI adapter saw the end of its input: the app's answer about a
    truncated upload must not reach the client as a success."""
    chunks = iter([b"y" * 100_000] * 20)  # 2 MB, chunked, over the 1 MB limit
    response = httpx.post(gateway.url + "/flask/echo", content=chunks, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


# ---- Starlette (ASGI) ---------------------------------------------------------------------------


def test_starlette_request_response_with_lifespan_state_and_root_path(
    gateway: GatewayProcess,
) -> None:
    response = get(gateway, "/starlette/hello", headers={"x-request-id": "st-1"})
    assert response.json() == {
        "url": f"http://127.0.0.1:{gateway.port}/starlette/hello",
        "root_path": "/starlette",
        "path": "/starlette/hello",
        "request_id": "st-1",
        "started": True,  # its lifespan ran and its state reached the request
    }


def test_starlette_streams_both_ways(gateway: GatewayProcess) -> None:
    body = b"s" * 300000
    response = httpx.post(
        gateway.url + "/starlette/echo", content=iter([body[:1000], body[1000:]]), timeout=10
    )
    assert response.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    with httpx.stream("GET", gateway.url + "/starlette/stream?n=20", timeout=10) as streamed:
        assert b"".join(streamed.iter_bytes()) == b"".join(
            f"chunk {i}\n".encode() for i in range(20)
        )


async def test_a_starlette_websocket_through_the_gateway(gateway: GatewayProcess) -> None:
    async with client(f"ws://127.0.0.1:{gateway.port}/starlette/ws") as ws:
        await ws.send("hi")
        assert await ws.recv() == "starlette: hi"


# ---- a bare ASGI callable and the blueprint --------------------------------------------------


def test_a_bare_asgi_app_without_lifespan(gateway: GatewayProcess) -> None:
    response = get(gateway, "/bare/anything")
    assert (response.status_code, response.content) == (200, b"h" * 99 + b"\n")


def test_the_quart_blueprint_still_works(gateway: GatewayProcess) -> None:
    response = get(gateway, "/hello/", headers={"x-request-id": "bp-1"})
    assert response.json() == {
        "message": "hello from an in-process blueprint",
        "request_id": "bp-1",
    }
    assert get(gateway, "/hello/ada").json() == {"message": "hello, ada"}


def test_a_blueprint_builds_its_public_urls_under_its_own_endpoint_names(
    gateway: GatewayProcess,
) -> None:
    """url_for("shop.index") is the blueprint's own name (it was a 500, BuildError), and
    under strip_prefix its URLs are the public ones; request.path is the path within the
    mount and root_path the mount (Flask's and Quart's convention, as for WSGI apps)."""
    assert get(gateway, "/shop2/").json() == {"self": "/shop2/", "path": "/", "root": "/shop2"}
    assert get(gateway, "/shop2/items/5").json() == {
        "self": "/shop2/items/5",
        "index": "/shop2/",
        "path": "/items/5",
        "root": "/shop2",
    }
    missing = get(gateway, "/shop2/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def test_a_blueprint_websocket_through_the_gateway(gateway: GatewayProcess) -> None:
    """docs/in-process-apps.md: a WebSocket route to a blueprint hands it the session."""
    async with client(f"ws://127.0.0.1:{gateway.port}/shop2/ws") as ws:
        await ws.send("hi")
        assert await ws.recv() == "shop: hi"


def test_check_reports_each_apps_kind(tmp_path: Path) -> None:
    (tmp_path / "hello_app.py").write_text((ROOT / "examples" / "hello_app.py").read_text())
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"upstreams.flask: in-process wsgi (threads = 4) app ({APPS}:flask_app)" in lines
    assert f"upstreams.starlette: in-process asgi app ({APPS}:starlette_app)" in lines
    assert f"upstreams.bare: in-process asgi app ({APPS}:bare_asgi)" in lines
    assert (
        f"upstreams.factory: in-process wsgi (threads = 8) app ({APPS}:create_flask_app)" in lines
    )
    assert "upstreams.hello: in-process blueprint app (hello_app:blueprint)" in lines
