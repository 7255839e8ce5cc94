"""The HTTP/1.1 upstream client and its pool, against small scripted servers on real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from upstreams import (
    PoolExhausted,
    TargetSpec,
    Upstream,
    UpstreamProtocolError,
    UpstreamRequest,
    UpstreamSpec,
    UpstreamTimeout,
)
from upstreams.pool import ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """A server whose every connection runs ``handler(reader, writer, connection_number)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.writers: list[asyncio.StreamWriter] = []
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.server.close()
        await self.server.wait_closed()

    def spec(self, **kw: object) -> UpstreamSpec:
        return UpstreamSpec("t", (TargetSpec("http", "127.0.0.1", self.port),), **kw)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def reply(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), extra, body)


async def body_of(upstream: Upstream, target: bytes = b"/", method: bytes = b"GET") -> bytes:
    response = await upstream.send(UpstreamRequest(method, target, []))
    data = response.first + b"".join([c async for c in response.body])
    await response.aclose()
    return data


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while True:
        head = await read_request(reader)
        writer.write(reply(head.split(b" ")[1]))
        await writer.drain()


async def test_connections_are_reused() -> None:
    async with Scripted(keep_alive) as server:
        upstream = Upstream(server.spec())
        for i in range(20):
            assert await body_of(upstream, b"/%d" % i) == b"/%d" % i
        assert server.connections == 1
        await upstream.aclose()


async def test_concurrency_opens_up_to_max_connections() -> None:
    async with Scripted(keep_alive) as server:
        upstream = Upstream(server.spec(max_connections=4))
        results = await asyncio.gather(*(body_of(upstream, b"/%d" % i) for i in range(50)))
        assert results == [b"/%d" % i for i in range(50)]
        assert 1 <= server.connections <= 4
        await upstream.aclose()


async def test_stale_pooled_connection_is_retried_once_on_a_new_one() -> None:
    async def one_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await read_request(reader)
        writer.write(reply(b"first"))
        await writer.drain()
        await read_request(reader)  # the next request on this connection: close unanswered
        writer.transport.abort()

    async with Scripted(one_then_drop) as server:
        upstream = Upstream(server.spec())
        assert await body_of(upstream) == b"first"
        assert await body_of(upstream) == b"first"  # replayed on a second connection
        assert server.connections == 2
        await upstream.aclose()


async def test_non_replayable_body_is_not_retried() -> None:
    async def drop_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int
    ) -> None:
        await read_request(reader)
        writer.write(reply())
        await writer.drain()
        await read_request(reader)
        writer.transport.abort()

    async def stream() -> AsyncIterator[bytes]:
        yield b"data"

    async with Scripted(drop_second) as server:
        upstream = Upstream(server.spec())
        await body_of(upstream)
        with pytest.raises(UpstreamProtocolError):
            await upstream.send(UpstreamRequest(b"POST", b"/", [], stream(), None))
        assert server.connections == 1
        await upstream.aclose()


async def test_chunked_response_is_dechunked_and_trailers_dropped() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n"
            )
            await writer.drain()
            writer.write(b"6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")
            await writer.drain()

    async with Scripted(chunked) as server:
        upstream = Upstream(server.spec())
        assert await body_of(upstream) == b"hello world"
        assert await body_of(upstream) == b"hello world"
        assert server.connections == 1  # the connection was clean for reuse
        await upstream.aclose()


async def test_interim_100_continue_is_skipped_and_head_has_no_body() -> None:
    # A HEAD response that announces a body (as RFC 9110 asks) has none; its connection is
    # not reused, since an upstream that sent the body anyway would poison the next exchange.
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            head = await read_request(reader)
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + reply(b"after"))
            await writer.drain()

    async with Scripted(interim) as server:
        upstream = Upstream(server.spec())
        assert await body_of(upstream) == b"after"
        response = await upstream.send(UpstreamRequest(b"HEAD", b"/", []))
        assert response.status == 200 and response.complete and response.first == b""
        assert await body_of(upstream) == b"after"
        assert server.connections == 2
        await upstream.aclose()


@pytest.mark.parametrize(
    "bad",
    [
        b"HTTP/1.1 200 OK\ncontent-length: 0\n\n",  # bare LF
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
)
async def test_malformed_responses_are_protocol_errors(bad: bytes) -> None:
    async def send_bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(bad)
        await writer.drain()
        await reader.read()

    async with Scripted(send_bad) as server:
        upstream = Upstream(server.spec(read_timeout=5.0))
        with pytest.raises(UpstreamProtocolError):
            await body_of(upstream)
        await upstream.aclose()


async def test_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()

    async with Scripted(silent) as server:
        upstream = Upstream(server.spec(read_timeout=0.2))
        with pytest.raises(UpstreamTimeout) as info:
            await body_of(upstream)
        assert info.value.phase == "read"
        await upstream.aclose()


async def test_pool_timeout_and_cancelled_waiters_leak_nothing() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(reply())
            await writer.drain()

    async with Scripted(held) as server:
        spec = server.spec(max_connections=1, pool_timeout=0.2)
        pool = ConnectionPool(spec.targets[0], spec)
        first = asyncio.ensure_future(pool.send(UpstreamRequest(b"GET", b"/", [])))
        await asyncio.sleep(0)
        with pytest.raises(PoolExhausted):
            await pool.send(UpstreamRequest(b"GET", b"/", []))
        # Waiters cancelled while queued (a client gone away) must not keep slots.
        waiters = [
            asyncio.ensure_future(pool.send(UpstreamRequest(b"GET", b"/", []))) for _ in range(5)
        ]
        await asyncio.sleep(0.01)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        release.set()
        response = await first
        await response.aclose()
        stats = pool.stats()
        assert (stats.in_use, stats.idle, stats.waiting) == (0, 1, 0)
        again = await pool.send(UpstreamRequest(b"GET", b"/", []))
        assert again.status == 200
        await pool.aclose()


async def test_cancelling_mid_request_discards_the_connection() -> None:
    started = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            if n == 1:
                started.set()
                await reader.read()
                return
            writer.write(reply())
            await writer.drain()

    async with Scripted(slow) as server:
        spec = server.spec(max_connections=1)
        pool = ConnectionPool(spec.targets[0], spec)
        task = asyncio.ensure_future(pool.send(UpstreamRequest(b"GET", b"/", [])))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().in_use == 0
        response = await pool.send(UpstreamRequest(b"GET", b"/", []))  # a fresh connection
        assert response.status == 200 and server.connections == 2
        await pool.aclose()


async def test_httpx_client_api_over_the_same_pool() -> None:
    async with Scripted(keep_alive) as server:
        upstream = Upstream(server.spec())
        response = await upstream.client.get("/hello?x=1")
        assert isinstance(response, httpx.Response)
        assert response.status_code == 200
        assert response.text == "/hello?x=1"
        posted = await upstream.client.post("/p", content=b"abc")
        assert posted.status_code == 200
        assert server.connections == 1
        await upstream.aclose()


def test_weighted_balancer_is_smooth_and_proportional() -> None:
    from tests.test_resilience_balancing import names, targets
    from upstreams.balancer import make_balancer

    balancer = make_balancer("weighted", targets(a=5, b=1, c=1))
    picks = names(balancer, 7)
    assert sorted(picks) == ["a"] * 5 + ["b", "c"]
    assert picks[:2] == ["a", "a"] and "b" in picks[2:4]
    rr = make_balancer("round_robin", targets(a=1, b=1))
    assert names(rr, 4) == ["a", "b", "a", "b"]
