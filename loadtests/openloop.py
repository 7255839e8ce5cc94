"""An open-loop load generator: requests start at a fixed arrival rate, whatever the answers.

Closed-loop tools (wrk, Locust users) wait for an answer before the next request, so a
server that slows down is offered less and overload hides. Here request *i* is due at
``start + i / rate`` and its latency is measured from that moment (no coordinated
omission): a request that could not even be sent on time counts its wait. Each request
takes an idle keep-alive connection or opens one (up to ``max_connections``); one that
gets no complete answer within ``timeout`` is *unanswered*.

Used by loadtests/overload.py; alone: ``python -m loadtests.openloop URL RATE SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class OpenLoopResult:
    rate: float
    seconds: float
    offered: int = 0
    #: Latencies (ms, from the due time) of 200s, and of 503s carrying Retry-After.
    ok_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    #: Other statuses, and requests with no complete answer in time.
    other: int = 0
    unanswered: int = 0
    refused_without_retry_after: int = 0
    #: Seconds from the first due time to the last answer (a backlog drains after ``seconds``).
    elapsed: float = 0.0

    @property
    def goodput(self) -> float:
        """200s per second over the time they took to arrive, the backlog's drain included."""
        return len(self.ok_ms) / max(self.seconds, self.elapsed)

    def summary(self) -> dict[str, float]:
        return {
            "offered_rps": self.offered / self.seconds,
            "goodput_rps": self.goodput,
            "ok_p50_ms": percentile(self.ok_ms, 0.50),
            "ok_p99_ms": percentile(self.ok_ms, 0.99),
            "refused": len(self.refused_ms),
            "refused_p99_ms": percentile(self.refused_ms, 0.99),
            "other": self.other,
            "unanswered": self.unanswered,
        }


class _Connections:
    """Idle keep-alive connections to one address, and how many are open."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self.open = 0
        self._freed = asyncio.Event()

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.open < self.limit:
                self.open += 1
                try:
                    return await asyncio.open_connection(self.host, self.port)
                except BaseException:
                    self.open -= 1
                    raise
            self._freed.clear()
            await self._freed.wait()

    def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.idle.append(conn)
        self._freed.set()

    def lost(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            conn[1].close()
            self.open -= 1
            self._freed.set()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


async def run(
    url: str, rate: float, seconds: float, *, timeout: float = 5.0, max_connections: int = 4096
) -> OpenLoopResult:
    """Offer ``rate`` requests per second of GET ``url`` for ``seconds``."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nhost: {parts.netloc}\r\n\r\n".encode()
    pool = _Connections(parts.hostname or "127.0.0.1", parts.port or 80, max_connections)
    result = OpenLoopResult(rate, seconds)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        conn = None
        try:
            async with asyncio.timeout(timeout):
                conn = await pool.take()
                reader, writer = conn
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                lower = head.lower()
                start = lower.index(b"content-length:") + 15
                length = int(lower[start : lower.index(b"\r\n", start)])
                await reader.readexactly(length)
            elapsed = (loop.time() - due) * 1000
            if b"connection: close" in lower:
                pool.lost(conn)
            else:
                pool.give_back(conn)
            conn = None
            if status == 200:
                result.ok_ms.append(elapsed)
            elif status == 503:
                result.refused_ms.append(elapsed)
                if b"retry-after:" not in lower:
                    result.refused_without_retry_after += 1
            else:
                result.other += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            result.unanswered += 1
        finally:
            pool.lost(conn)

    start = loop.time() + 0.05
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        now = loop.time()
        due_count = min(total, int((now - start) * rate) + 1)
        while sent < due_count:
            task = loop.create_task(one(start + sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - loop.time()))
    result.offered = sent
    if tasks:
        await asyncio.wait(tasks)
    result.elapsed = loop.time() - start
    pool.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    result = asyncio.run(run(args.url, args.rate, args.seconds))
    for key, value in result.summary().items():
        print(f"{key:>16}: {value:.1f}")


if __name__ == "__main__":
    main()
