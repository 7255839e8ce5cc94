"""A WSGI app (PEP 3333) served as an ASGI app, each request on a thread of a bounded pool.

What it keeps of a2wsgi, which it replaces: a pool of ``threads`` per app, the request body
streamed to ``wsgi.input`` as it arrives, the response streamed as the app yields it, with
the app's thread held back by a slow client (each piece is handed to the server before the
next is taken). What it adds, none of which a2wsgi 1.10's ``WSGIResponder`` can be made to
do from outside (it reads ``receive`` only when the app reads its body, its pool queue has
no bound on time, and the servers drop a send to a client that left without a word):

- **the client leaving ends the response**: the request's ``receive`` is read by the adapter
  (body data up to :data:`READ_AHEAD` ahead of the app, then whatever comes next, which can
  only be ``http.disconnect``). Once the client has left, the app's next piece, or its next
  ``write()``, raises :class:`ClientGone` in its thread, the iterator's ``close()`` runs (as
  PEP 3333 requires: a generator's ``finally``, Flask's teardown) and the thread is free;
- **a bounded wait for a thread**: a request waits for a free thread at most ``wait``
  seconds, then :class:`AppBusy` is raised (the dispatcher answers 503) and the app is never
  called. A request whose client left while it waited is dropped without running the app.

What no adapter can do: a handler blocked inside the app (``time.sleep``, a query) is not
interrupted; it holds its thread until it returns or yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Final, TypeVar

from gateway.asgi_types import Message, Receive, Scope, Send

T = TypeVar("T")
ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Request body bytes read from the client ahead of the app, per request: with nothing
#: held back, the adapter keeps reading ``receive`` and sees the client leave.
READ_AHEAD: Final = 65536
#: How often an app thread waiting on the event loop looks whether its client left.
_POLL: Final = 0.5


class AppBusy(Exception):
    """No thread of the pool was free within ``waited`` seconds; the app was not called."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"no free thread within {waited:g} s")
        self.waited = waited


class ClientGone(OSError):
    """Raised in the app's thread when the client has left: what a broken pipe is under a
    WSGI server. Raised from ``write()`` too, so an app that writes learns it."""


class WSGIAdapter:
    """``app`` as an ASGI application on a pool of ``threads`` threads of its own; a request
    waits at most ``queue_timeout`` seconds for a thread (:meth:`serve` takes a shorter
    wait, the route's deadline)."""

    def __init__(self, app: WSGIApp, threads: int, queue_timeout: float, name: str = "") -> None:
        self.app = app
        self.threads = threads
        self.queue_timeout = queue_timeout
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=f"wsgi-{name or 'app'}")
        #: Threads free, counted on the event loop: made there, on the first request.
        self._free: asyncio.Semaphore | None = None
        #: Requests waiting for a thread now.
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, receive, send, self.queue_timeout)

    async def serve(self, scope: Scope, receive: Receive, send: Send, wait: float) -> None:
        """One request; :class:`AppBusy` when no thread is free within ``wait`` seconds."""
        kind = scope["type"]
        if kind == "websocket":  # WSGI has no WebSocket: the server answers the handshake 403
            await send({"type": "websocket.close", "code": 1000})
            return
        if kind == "lifespan":
            await _no_lifespan(receive, send)
            return
        loop = asyncio.get_running_loop()
        exchange = Exchange(loop, receive, send)
        pump = loop.create_task(exchange.pump())
        try:
            if not await self._admit(exchange, wait):
                return  # the client left while it waited: nobody to run the app for
            environ = environ_of(scope, Input(exchange))
            context = contextvars.copy_context()
            try:
                job = self._pool.submit(context.run, exchange.run, self.app, environ)
            except BaseException:
                self._release()
                raise
            job.add_done_callback(self._on_done(loop))
            with contextlib.suppress(ClientGone):
                await asyncio.wrap_future(job)
        finally:
            exchange.leave()  # a thread still running (a cancelled request) stops at its next piece
            pump.cancel()
        if exchange.error is not None and not exchange.headers_sent:
            raise exchange.error

    async def _admit(self, exchange: Exchange, wait: float) -> bool:
        """Take a thread: True; False if the client left meanwhile; AppBusy after ``wait``."""
        if self._free is None:
            self._free = asyncio.Semaphore(self.threads)
        free = self._free
        if free.locked():
            self.waiting += 1
            try:
                async with asyncio.timeout(wait):
                    await free.acquire()
            except TimeoutError:
                if exchange.left.is_set():
                    return False
                raise AppBusy(wait) from None
            finally:
                self.waiting -= 1
        else:
            await free.acquire()  # a thread is free: no wait, no timer
        if exchange.left.is_set():
            free.release()
            return False
        return True

    def _release(self) -> None:
        assert self._free is not None
        self._free.release()

    def _on_done(self, loop: asyncio.AbstractEventLoop) -> Callable[[Future[None]], None]:
        """The thread is given back when the app's call has returned, not when the request
        ended: a cancelled request's thread is counted busy until it is really free."""
        free = self._free
        assert free is not None

        def done(_: Future[None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(free.release)

        return done


class Exchange:
    """One request between the event loop (:meth:`pump`, :meth:`read`, :meth:`deliver`) and
    the app's thread (:meth:`run`, :meth:`start_response`, :meth:`write`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, receive: Receive, send: Send) -> None:
        self.loop = loop
        self._receive = receive
        self._send = send
        self._held: deque[bytes] = deque()
        self._held_size = 0
        self._more = True  # body still to come from the client
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        #: The client left, or the request ended: set on the loop, read by the thread.
        self.left = threading.Event()
        #: An exception ``receive`` raised: raised again once the app is done.
        self.error: Exception | None = None
        self._start: Message | None = None
        self.headers_sent = False

    # ---- on the event loop ----------------------------------------------------------------

    async def pump(self) -> None:
        """Read the request: body data ahead of the app, then the client leaving."""
        try:
            while True:
                while self._more and self._held_size >= READ_AHEAD:
                    self._room.clear()
                    await self._room.wait()
                message = await self._receive()
                kind = message["type"]
                if kind == "http.disconnect":
                    break
                if kind == "http.request" and self._more:
                    body = message.get("body", b"")
                    if body:
                        self._held.append(body)
                        self._held_size += len(body)
                    self._more = bool(message.get("more_body", False))
                    self._arrived.set()
        except Exception as error:  # kept, and raised again by serve
            self.error = error
        self.leave()

    def leave(self) -> None:
        self.left.set()
        self._arrived.set()
        self._room.set()

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end (or once the client left)."""
        while not self._held and self._more and not self.left.is_set():
            self._arrived.clear()
            await self._arrived.wait()
        if not self._held:
            return b""
        chunk = self._held.popleft()
        self._held_size -= len(chunk)
        self._room.set()
        return chunk

    async def deliver(self, messages: list[Message]) -> None:
        for message in messages:
            await self._send(message)

    # ---- in the app's thread --------------------------------------------------------------

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for it; ClientGone if the client leaves
        while it waits (a send the server holds back forever cannot hold the thread)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed: the request is over
            coroutine.close()
            raise ClientGone("the event loop is closed") from None
        while True:
            try:
                return future.result(_POLL)
            except TimeoutError:
                if future.done():
                    raise  # the coroutine's own TimeoutError
                if self.left.is_set() or self.loop.is_closed():
                    future.cancel()
                    raise ClientGone("the client left") from None

    def run(self, app: WSGIApp, environ: dict[str, Any]) -> None:
        """Call the app and send what it yields; its iterator is closed whatever happens."""
        iterable: Iterable[bytes] | None = None
        try:
            iterable = app(environ, self.start_response)
            for chunk in iterable:
                self._post(chunk)
            self._finish()
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:  # too late for another status: PEP 3333 says re-raise
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._start is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        self._start = {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [
                (name.strip().lower().encode("latin-1"), value.strip().encode("latin-1"))
                for name, value in headers
            ],
        }
        return self._post

    def _post(self, chunk: bytes) -> None:
        """A piece of the body (``write()`` too); the head goes with the first non-empty
        piece, as PEP 3333 asks."""
        if self.left.is_set():
            raise ClientGone("the client left")
        if not chunk:
            return
        messages = self._head()
        messages.append({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
        self.call(self.deliver(messages))

    def _finish(self) -> None:
        if self.left.is_set():
            raise ClientGone("the client left")
        messages = self._head()
        messages.append({"type": "http.response.body", "body": b"", "more_body": False})
        self.call(self.deliver(messages))

    def _head(self) -> list[Message]:
        if self.headers_sent:
            return []
        if self._start is None:
            raise RuntimeError("the WSGI app returned a body without calling start_response")
        self.headers_sent = True
        return [self._start]


class Input:
    """``wsgi.input``: the request body, read as the client sends it (file-like, as PEP 3333
    asks: ``read``, ``readline``, ``readlines``, iteration). Ends early if the client left."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange
        self._buffer = bytearray()
        self._ended = False

    def _fill(self) -> bool:
        if self._ended:
            return False
        exchange = self._exchange
        try:
            chunk = exchange.call(exchange.read())
        except ClientGone:
            chunk = b""
        if not chunk:
            self._ended = True
            return False
        self._buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        start = 0
        while True:
            index = self._buffer.find(b"\n", start)
            if index >= 0:
                end = index + 1
                break
            start = len(self._buffer)
            if (limit is not None and start >= limit) or not self._fill():
                end = start
                break
        return self._take(end if limit is None else min(end, limit))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def environ_of(scope: Scope, body: Input) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333; paths as latin-1 "bytes in str").

    A header whose name holds ``_`` is dropped, as gunicorn and nginx do: in the environ
    ``X_Forwarded_For`` and ``X-Forwarded-For`` would be one and the same key. Cookie
    headers are joined with ``; `` (RFC 6265), others with ``,``.
    """
    root = scope.get("root_path", "")
    path = scope["path"]
    if path.startswith(root):
        path = path[len(root) :]
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or 0),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        # A chunked body (no Content-Length) can be read to its end: without the flag
        # Werkzeug (Flask) reads such a body as empty.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "asgi.scope": scope,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        if key in environ:
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
        environ[key] = value
    return environ


async def _no_lifespan(receive: Receive, send: Send) -> None:
    """WSGI has no lifespan: startup and shutdown complete at once."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
