"""WebSocket sessions as operations see them: many at once in bounded memory, a SIGTERM
drain that says 1001 (Going Away) to both sides, a hot reload that leaves open sessions on
the snapshot they started with. Each runs a real gateway process on each engine."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.observability import Admin, Samples, value, wait_until
from tests.support.ws_client import client, closed_with, head_and_body, raw_handshake
from tests.support.ws_upstream import WebSocketUpstream

CONFIG = """
[upstreams.ws]
targets = ["{upstream}"]

[[routes]]
name = "ws"
path = "/ws"
upstream = "ws"
{websocket}
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[WebSocketUpstream]:
    server = WebSocketUpstream().start()
    yield server
    server.stop()


def config(upstream: WebSocketUpstream, websocket: str = "websocket = true") -> str:
    return CONFIG.format(upstream=upstream.url, websocket=websocket)


async def test_500_concurrent_sessions_in_bounded_memory(
    make_gateway: Callable[..., GatewayProcess], engine: str, upstream: WebSocketUpstream
) -> None:
    gateway = make_gateway(config(upstream), engine=engine)
    url = f"ws://127.0.0.1:{gateway.port}/ws/many/echo"
    async with client(url) as warm:  # imports and first-use allocations happen here
        await warm.send("warm")
        assert await warm.recv() == "warm"
    before = gateway.rss_kib()
    sessions = await asyncio.gather(*(client(url) for _ in range(500)))
    try:
        payload = "m" * 1024
        await asyncio.gather(*(ws.send(f"{i}:{payload}") for i, ws in enumerate(sessions)))
        echoes = await asyncio.gather(*(ws.recv() for ws in sessions))
        assert echoes == [f"{i}:{payload}" for i in range(500)]
        grown = gateway.rss_kib() - before
    finally:
        await asyncio.gather(*(ws.close() for ws in sessions))
    # What a session costs in the gateway: two connections' buffers and the relay's tasks.
    # Measured 50-55 KiB on each engine; an unbounded buffer (or a per-session copy of a
    # big object) would be many times that.
    assert grown < 500 * 120, f"{grown} KiB for 500 sessions"


async def test_a_drain_closes_open_sessions_with_1001_on_both_sides(
    make_gateway: Callable[..., GatewayProcess], engine: str, upstream: WebSocketUpstream
) -> None:
    # graceful_timeout an hour: sessions the drain failed to end would hold the exit that
    # long, so an exit at all shows they ended at once (no clock decides it).
    server = "graceful_timeout = 3600.0\n"
    gateway = make_gateway(config(upstream), engine=engine, server_config=server)
    paths = [f"/ws/drain{i}-{engine}/echo" for i in range(3)]
    sessions = [await client(f"ws://127.0.0.1:{gateway.port}{p}") for p in paths]
    for ws in sessions:
        await ws.send("before")
        assert await ws.recv() == "before"
    gateway.signal(signal.SIGTERM)
    closes = await asyncio.gather(*(closed_with(ws) for ws in sessions))
    assert [(c.code, c.reason) for c in closes] == [(1001, "server shutting down")] * 3
    for path in paths:
        assert await upstream.next_close(path) == (1001, "server shutting down")
    assert gateway.process is not None
    assert await asyncio.to_thread(gateway.process.wait, 60) == 0


async def test_a_reload_leaves_open_sessions_on_their_snapshot(
    make_gateway: Callable[..., GatewayProcess], engine: str, upstream: WebSocketUpstream
) -> None:
    gateway = make_gateway(config(upstream), engine=engine)
    url = f"ws://127.0.0.1:{gateway.port}/ws/kept-{engine}/echo"
    async with client(url) as ws:
        await ws.send("one")
        assert await ws.recv() == "one"
        gateway.config.write_text(config(upstream, websocket=""))  # WebSockets off
        gateway.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:  # until the new snapshot answers new handshakes
            status, _, _ = head_and_body(await raw_handshake(gateway.port, "/ws/new/echo"))
            if status == 501 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert status == 501
        await ws.send("two")  # the open session is untouched
        assert await ws.recv() == "two"
        await ws.close(4002, "done")
    assert await upstream.next_close(f"/ws/kept-{engine}/echo") == (4002, "done")


async def test_sessions_are_in_the_metrics_and_the_access_log(
    make_gateway: Callable[..., GatewayProcess], upstream: WebSocketUpstream, tmp_path: Path
) -> None:
    admin = Admin()
    log_path = tmp_path / "access.log"
    text = (
        config(upstream)
        + admin.section()
        + (f'[access_log]\npath = "{log_path}"\nformat = "json"\nflush_interval = 0.05\n')
    )
    gateway = make_gateway(text)
    url = f"ws://127.0.0.1:{gateway.port}/ws/observed/echo"
    async with client(url, additional_headers={"x-request-id": "observed-1"}) as ws:
        await ws.send("abc")
        assert await ws.recv() == "abc"
        await ws.send(b"defg")
        assert await ws.recv() == b"defg"
        samples = await asyncio.to_thread(admin.scrape)
        assert value(samples, "quartgate_websocket_sessions_open", route="ws") == 1
        await ws.close(4000, "bye")
    assert await upstream.next_close("/ws/observed/echo") == (4000, "bye")

    def ended() -> Samples | None:
        samples = admin.scrape()
        closes = value(
            samples, "quartgate_websocket_closes_total", route="ws", by="client", code="4xxx"
        )
        return samples if closes == 1 else None

    samples = await asyncio.to_thread(wait_until, ended, 10, "the session's end counted")
    assert value(samples, "quartgate_websocket_sessions_open", route="ws") == 0
    for direction, messages, size in (("in", 2, 7), ("out", 2, 7)):
        labels = {"route": "ws", "direction": direction}
        assert value(samples, "quartgate_websocket_messages_total", **labels) == messages
        assert value(samples, "quartgate_websocket_message_bytes_total", **labels) == size
    assert value(samples, "quartgate_websocket_session_duration_seconds_count", route="ws") == 1

    def logged() -> dict[str, object] | None:
        for line in log_path.read_text().splitlines() if log_path.exists() else ():
            record = json.loads(line)
            if record["request_id"] == "observed-1":
                return dict(record)
        return None

    record = await asyncio.to_thread(wait_until, logged, 10, "the session's access log line")
    assert record["status"] == 101
    assert record["method"] == "GET"
    assert record["route"] == "ws"
    assert record["upstream"] == "ws"
    assert (record["bytes_in"], record["bytes_out"]) == (7, 7)
    assert record["error"] == "ws_close:4000:4000:client"

    # A session that ends as sessions do (1000 both ways) is no error in the access log.
    async with client(url, additional_headers={"x-request-id": "observed-2"}) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        await ws.close(1000, "")
    assert (await upstream.next_close("/ws/observed/echo"))[0] == 1000

    def logged_normal() -> dict[str, object] | None:
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            if record["request_id"] == "observed-2":
                return dict(record)
        return None

    normal = await asyncio.to_thread(wait_until, logged_normal, 10, "the second session's line")
    assert normal["status"] == 101 and not normal["error"]


async def test_open_sessions_count_for_the_least_outstanding_balancer(
    make_gateway: Callable[..., GatewayProcess], upstream: WebSocketUpstream
) -> None:
    """s1 and s2 go to different targets; once s2 has ended, s3 must go where s2 was (no
    session there), not where round robin or a tie would send it (beside s1)."""
    other = WebSocketUpstream().start()
    try:
        gateway = make_gateway(
            f'[upstreams.two]\ntargets = ["{upstream.url}", "{other.url}"]\n'
            'balancer = "least_outstanding"\n\n'
            '[[routes]]\npath = "/ws"\nupstream = "two"\nwebsocket = true\n'
        )
        url = f"ws://127.0.0.1:{gateway.port}/ws/"

        def served(path: str) -> WebSocketUpstream:
            for server in (upstream, other):
                if path in list(server.opened.queue):
                    return server
            raise AssertionError(f"no target saw {path}")

        async with client(url + "lo1/echo") as s1:
            await s1.send("x")
            assert await s1.recv() == "x"
            async with client(url + "lo2/echo") as s2:
                await s2.send("x")
                assert await s2.recv() == "x"
            assert served("/ws/lo2/echo") is not served("/ws/lo1/echo")
            await served("/ws/lo2/echo").next_close("/ws/lo2/echo")
            async with client(url + "lo3/echo") as s3:
                await s3.send("x")
                assert await s3.recv() == "x"
            assert served("/ws/lo3/echo") is served("/ws/lo2/echo")
    finally:
        other.stop()
