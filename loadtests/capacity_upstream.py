"""An HTTP/1.1 backend of known capacity: it serves ``capacity`` requests at a time, each for
``service_ms``, and queues the rest in arrival order (as a thread pool or a database would).

Its capacity is ``capacity / service_ms`` requests per second, whatever the load: what
the overload benchmark (loadtests/overload.py) and tests/test_overload.py measure the
gateway against. ``GET /stats`` answers at once with what it saw: requests served, the
most in service or waiting at once (``max_outstanding``), and the most connections open.
``POST /stats/reset`` zeroes them. ``?ms=N`` on a request overrides its service time.

Run: ``python -m loadtests.capacity_upstream --port 9002 --capacity 8 --service-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from urllib.parse import parse_qs, urlsplit

BODY = b'{"ok": true}'


class CapacityBackend:
    """The backend; :meth:`serve` runs it in the current loop, :meth:`start` in a thread."""

    def __init__(self, capacity: int = 8, service_ms: float = 20.0) -> None:
        self.capacity = capacity
        self.service = service_ms / 1000
        self.served = 0
        self.outstanding = 0
        self.max_outstanding = 0
        self.connections = 0
        self.max_connections = 0
        self.port = 0
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, int]:
        return {
            "served": self.served,
            "outstanding": self.outstanding,
            "max_outstanding": self.max_outstanding,
            "connections": self.connections,
            "max_connections": self.max_connections,
        }

    def reset(self) -> None:
        self.served = 0
        self.max_outstanding = self.outstanding
        self.max_connections = self.connections

    async def serve(self, port: int = 0, ready: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.capacity)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set()
        async with self._server:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

    def start(self) -> CapacityBackend:
        ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve(0, ready)))
        self._thread.daemon = True
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the capacity backend did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._cancel_all)
        if self._thread is not None:
            self._thread.join(10)

    def _cancel_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks():
            task.cancel()

    def __enter__(self) -> CapacityBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.max_connections = max(self.max_connections, self.connections)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, _, rest = head.partition(b"\r\n")
                method, target, _ = line.split(b" ", 2)
                length = 0
                for header in rest.split(b"\r\n"):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                body = await self._answer(method, target.decode("latin-1"))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%b" % (len(body), body)
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.connections -= 1
            writer.close()

    async def _answer(self, method: bytes, target: str) -> bytes:
        parts = urlsplit(target)
        if parts.path == "/stats":
            if method == b"POST":
                self.reset()
            return json.dumps(self.stats()).encode()
        service = self.service
        ms = parse_qs(parts.query).get("ms")
        if ms:
            service = float(ms[0]) / 1000
        assert self._slots is not None
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        try:
            async with self._slots:
                await asyncio.sleep(service)
        finally:
            self.outstanding -= 1
        self.served += 1
        return BODY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--service-ms", type=float, default=20.0)
    args = parser.parse_args()
    backend = CapacityBackend(args.capacity, args.service_ms)
    print(
        f"capacity backend on 127.0.0.1:{args.port}: {args.capacity} at a time, "
        f"{args.service_ms:g} ms each ({args.capacity * 1000 / args.service_ms:.0f} req/s)",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(backend.serve(args.port))


if __name__ == "__main__":
    main()
