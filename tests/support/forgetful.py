"""A TCP hop in front of a server that can forget its connections, as a failover does.

When a server's host reboots, or a virtual IP moves to a replica, the connections clients
hold look open to them (no FIN ever came) until they next send: the far end, which has no
state for them, answers with a reset. :meth:`ForgetfulProxy.forget` does exactly that to
every connection open now; connections made afterwards reach the server again.

    with ForgetfulProxy(redis.path) as proxy:   # a unix socket (or ("127.0.0.1", port))
        url = f"redis://127.0.0.1:{proxy.port}/0"
        ...
        proxy.forget()
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from pathlib import Path


class ForgetfulProxy:
    def __init__(self, target: Path | tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        #: Connections accepted so far.
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._forgotten: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def __enter__(self) -> ForgetfulProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def forget(self) -> None:
        """Drop every open connection's far side silently; its client is reset when it
        next sends a byte."""
        asyncio.run_coroutine_threadsafe(self._forget(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for client, server in self._pairs:
            client.transport.abort()
            server.transport.abort()
        for writer in self._forgotten:
            writer.transport.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forget(self) -> None:
        for client, server in self._pairs:
            server.transport.abort()
            self._forgotten.add(client)
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if isinstance(self.target, Path):
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
        else:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._pairs.append((writer, up_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, client=writer),
                self._pipe(up_reader, writer, client=None),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            return  # the proxy is stopping: nothing to report

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter | None,
    ) -> None:
        while True:
            data = await reader.read(65536)
            if client is not None and client in self._forgotten:
                _reset(client)  # no state for this connection here: RST, as a kernel does
                return
            if not data:
                return
            if writer.transport.is_closing():
                return
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
