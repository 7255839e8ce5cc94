"""A WSGI app's thread pool under clients that leave and requests that find it full, through
a real gateway process on each engine (issue 18 item 6, docs/in-process-apps.md):

- a client that disconnects from an endless Flask stream ends it: the iterator's ``close()``
  runs (the generator's ``finally``) and the thread is free again;
- with every thread held by a blocked handler, a further request is answered 503
  ``upstream_busy`` with ``Retry-After`` once its ``queue_timeout`` has passed, not left
  waiting; released, the app serves again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import httpx

from tests.support.gateway import GatewayProcess

THREADS = 2
QUEUE_TIMEOUT = 0.5
CONFIG = f"""
[upstreams.flask]
app = "tests.support.inprocess_apps:flask_app"
threads = {THREADS}
queue_timeout = {QUEUE_TIMEOUT}

[[routes]]
path = "/flask"
upstream = "flask"
strip_prefix = true
"""


def count(path: Path) -> int:
    """Bytes the test app wrote to ``path``: one per handler or generator event."""
    return len(path.read_text()) if path.exists() else 0


async def until(probe: Callable[[], bool], what: str) -> None:
    """Wait for ``probe`` to hold (the app's own records); a generous bound, no timing."""
    try:
        async with asyncio.timeout(15):
            while not probe():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def all_threads_serve_at_once(http: httpx.AsyncClient, folder: Path) -> None:
    """``THREADS`` handlers block at the same time, each on a thread of its own, then are
    released: every thread of the pool is free."""
    marker, release = folder / "running", folder / "release"
    params = {"marker": str(marker), "release": str(release)}
    blocked = [
        asyncio.ensure_future(http.get("/flask/block", params=params)) for _ in range(THREADS)
    ]
    await until(lambda: count(marker) == THREADS, f"{THREADS} handlers running at once")
    release.touch()
    assert [r.text for r in await asyncio.gather(*blocked)] == ["unblocked"] * THREADS


async def test_clients_that_leave_an_endless_wsgi_stream_close_it_and_free_the_thread(
    make_gateway: Callable[..., GatewayProcess], engine: str, tmp_path: Path
) -> None:
    gateway = make_gateway(CONFIG, engine=engine)
    started, closed = tmp_path / "started", tmp_path / "closed"
    target = "/flask/endless?" + urlencode({"started": str(started), "closed": str(closed)})
    for _ in range(THREADS):  # as many as the pool has threads: today they would all be held
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        async with asyncio.timeout(15):
            head = await reader.readuntil(b"tick\n")  # streaming: the generator holds a thread
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()  # the client leaves mid-stream, at the socket
        await writer.wait_closed()
    assert count(started) == THREADS
    # Each generator's finally ran: the iterator was closed, as PEP 3333 requires.
    await until(lambda: count(closed) == THREADS, "every endless generator closed")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        response = await http.get("/flask/hundred")
        assert (response.status_code, response.content) == (200, b"h" * 99 + b"\n")
        await all_threads_serve_at_once(http, tmp_path)


async def test_a_wsgi_request_finding_every_thread_busy_is_a_503_after_queue_timeout(
    make_gateway: Callable[..., GatewayProcess], engine: str, tmp_path: Path
) -> None:
    gateway = make_gateway(CONFIG, engine=engine)
    marker, release = tmp_path / "blocking", tmp_path / "release"
    params = {"marker": str(marker), "release": str(release)}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15) as http:
        blocked = [
            asyncio.ensure_future(http.get("/flask/block", params=params)) for _ in range(THREADS)
        ]
        await until(lambda: count(marker) == THREADS, "every thread held by a blocked handler")
        began = time.monotonic()
        busy = await http.get("/flask/hundred", headers={"x-request-id": "busy-1"})
        waited = time.monotonic() - began
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.headers["content-type"] == "application/json"
        assert busy.headers["x-request-id"] == "busy-1"
        assert busy.json() == {
            "error": "upstream_busy",
            "detail": f"in-process app 'flask': no free thread within {QUEUE_TIMEOUT:g} s",
            "request_id": "busy-1",
        }
        assert waited >= QUEUE_TIMEOUT  # it waited for a thread; not refused at once
        assert not any(task.done() for task in blocked)  # answered while all were held
        release.touch()
        assert [r.text for r in await asyncio.gather(*blocked)] == ["unblocked"] * THREADS
        assert (await http.get("/flask/hundred")).status_code == 200
        again = tmp_path / "again"
        again.mkdir()
        await all_threads_serve_at_once(http, again)


async def test_the_routes_timeout_bounds_the_wait_for_a_thread_when_shorter(
    make_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    config = CONFIG.replace(f"queue_timeout = {QUEUE_TIMEOUT}", "queue_timeout = 60")
    gateway = make_gateway(config + f"timeout = {QUEUE_TIMEOUT}\n")
    marker, release = tmp_path / "blocking", tmp_path / "release"
    params = {"marker": str(marker), "release": str(release)}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        blocked = [
            asyncio.ensure_future(http.get("/flask/block", params=params)) for _ in range(THREADS)
        ]
        await until(lambda: count(marker) == THREADS, "every thread held by a blocked handler")
        busy = await http.get("/flask/hundred")
        assert not any(task.done() for task in blocked)  # answered long before a minute
        release.touch()
        await asyncio.gather(*blocked)
    assert busy.status_code == 503
    assert busy.json()["detail"] == (
        f"in-process app 'flask': no free thread within {QUEUE_TIMEOUT:g} s"
    )
