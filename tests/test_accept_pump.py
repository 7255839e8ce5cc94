"""A burst of connections is accepted at once on a uvloop worker, however busy its loop.

libuv accepts one connection per loop iteration; the pump (gateway/server/accept_pump.py)
accepts everything waiting each time the listening socket is readable. These tests count
loop iterations, not seconds: a burst of connections waits in the kernel's accept queue
while the loop is held, then each iteration's accepts are read back. Every end-to-end test
of a gateway on uvloop (the default worker class) goes through the pump too.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import Callable

import uvloop

from gateway.server import accept_pump
from gateway.server.drain import stop_accepting

BURST = 64


class Counting(asyncio.Protocol):
    made: list[int]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"pong:" + data)  # type: ignore[attr-defined]


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def connect_while_held(sock: socket.socket, count: int) -> list[socket.socket]:
    """``count`` connections to ``sock``, made while the caller holds its loop (this blocks
    until the kernel has completed every handshake: each socket is writable)."""
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            client.connect(sock.getsockname())
        clients.append(client)
    _, writable, _ = select.select([], clients, [], 10)
    assert len(writable) == count
    return clients


async def accepted_per_iteration(pumped: bool) -> list[int]:
    """Accepts seen after each of the first iterations that follow a burst of BURST."""
    loop = asyncio.get_running_loop()
    made: list[int] = []
    Counting.made = made
    sock = listener()
    with accept_pump.serving(loop) if pumped else contextlib.nullcontext():
        server = await loop.create_server(Counting, sock=sock, backlog=1024)
        clients = connect_while_held(sock, BURST)
        seen = []
        for _ in range(8):
            await asyncio.sleep(0)  # one iteration, its I/O polled without waiting
            seen.append(len(made))
        server.close()
        for client in clients:
            client.close()
    return seen


def run_uvloop(main: Callable[[], object]) -> object:
    return uvloop.run(main())  # type: ignore[arg-type]


def test_libuv_alone_accepts_one_connection_per_iteration() -> None:
    """The behaviour the pump exists for: if this ever fails, libuv changed (good news)."""
    seen = run_uvloop(lambda: accepted_per_iteration(pumped=False))
    assert isinstance(seen, list)
    assert seen[-1] < BURST // 2, seen


def test_the_pump_accepts_the_whole_burst_within_two_iterations() -> None:
    seen = run_uvloop(lambda: accepted_per_iteration(pumped=True))
    assert isinstance(seen, list)
    assert seen[2] == BURST, seen


def test_pumped_connections_are_served_by_the_servers_protocol_and_stop_on_drain() -> None:
    async def main() -> tuple[list[bytes], int, bool]:
        loop = asyncio.get_running_loop()
        Counting.made = []
        sock = listener()
        with accept_pump.serving(loop) as pumps:
            server = await loop.create_server(Counting, sock=sock, backlog=16)
            clients = connect_while_held(sock, 8)  # libuv takes one, the pump the rest
            for client in clients:
                client.sendall(b"ping")
            answers = []
            for client in clients:
                answers.append(await loop.sock_recv(client, 9))
            accepted = sum(p.accepted for p in pumps)
            stop_accepting(loop, sock)  # a drain: no pump left reading a dead socket
            stopped = all(p._sock is None for p in pumps)
            for client in clients:
                client.close()
            server.close()
        return answers, accepted, stopped

    answers, accepted, stopped = run_uvloop(main)  # type: ignore[misc]
    assert answers == [b"pong:ping"] * 8  # the server's own protocol answered each
    assert accepted >= 7
    assert stopped


def test_an_asyncio_loop_gets_no_pump() -> None:
    async def main() -> list[accept_pump.AcceptPump]:
        loop = asyncio.get_running_loop()
        with accept_pump.serving(loop) as pumps:
            server = await loop.create_server(Counting, sock=listener())
            server.close()
        return pumps

    assert asyncio.run(main()) == []


def test_a_worker_that_does_not_keep_up_leaves_the_burst_to_libuv() -> None:
    """While the gateway refuses (loop behind, shedding, an adaptive limit refusing), the
    pump accepts nothing: new connections wait in the kernel, where they cost nothing."""

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        made: list[int] = []
        Counting.made = made
        sock = listener()
        with accept_pump.serving(loop, keeping_up=lambda: False) as pumps:
            server = await loop.create_server(Counting, sock=sock, backlog=1024)
            clients = connect_while_held(sock, BURST)
            seen = []
            for _ in range(8):
                await asyncio.sleep(0)
                seen.append(len(made))
            accepted = sum(p.accepted for p in pumps)
            server.close()
            for client in clients:
                client.close()
        return seen, accepted

    seen, accepted = run_uvloop(main)  # type: ignore[misc]
    assert accepted == 0
    assert seen[-1] < BURST // 2, seen


def test_keeping_up_reads_the_loop_lag_watch_and_the_adaptive_limits() -> None:
    class Lag:
        lag = 0.0
        shedding = False

    class Limiter:
        refused = 0

    class Upstream:
        limiter: Limiter | None = Limiter()

    class State:
        upstreams = {"u": Upstream()}

    class Proxy:
        loop_lag = Lag()
        state = State()

    class App:
        extensions = {"quartgate": Proxy()}

    check = accept_pump.keeping_up(App())
    assert check()
    Proxy.loop_lag.lag = accept_pump.BEHIND
    assert not check()
    Proxy.loop_lag.lag = 0.0
    Proxy.loop_lag.shedding = True
    assert not check()
    Proxy.loop_lag.shedding = False
    assert check()
    limiter = State.upstreams["u"].limiter
    assert limiter is not None
    limiter.refused += 1  # a refusal now: not keeping up for the next CALM seconds
    assert not check()
    assert accept_pump.keeping_up(object())()  # no gateway app: always
