"""A scripted HTTP/2 upstream (prior knowledge, hyper-h2 on the server side): each accepted
connection runs a test's script in a thread of its own, which reads requests and answers
with whatever frames it likes, well-formed or not.

Everything a connection received is recorded on its :class:`Peer`: the requests (headers
and body bytes, by stream), the GOAWAY codes and SETTINGS acknowledgements the gateway
sent, and whether the gateway closed the connection. ``peers`` lists the connections in
the order they were accepted; ``accepted`` is a semaphore released once per connection, so
a test waits for the n-th connection instead of sleeping.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events


class Closed(Exception):
    """The gateway closed the connection while a script waited for more: the script ends;
    whether the gateway should have closed it is its test's to say."""


@dataclass
class Request:
    stream_id: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    ended: bool = False


@dataclass
class Peer:
    """One connection from the gateway, as the upstream saw it."""

    index: int
    sock: socket.socket
    conn: h2.connection.H2Connection
    requests: dict[int, Request] = field(default_factory=dict)
    goaways: list[int] = field(default_factory=list)
    resets: list[tuple[int, int]] = field(default_factory=list)
    settings_acks: int = 0
    pings: int = 0
    closed: bool = False
    #: Set once the gateway closed the connection (its script saw the end).
    gone: threading.Event = field(default_factory=threading.Event)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, timeout: float = 10.0) -> list[Any]:
        """Read what the gateway sent once, record it, and answer what hyper-h2 answers
        by itself (SETTINGS and PING acknowledgements)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            data = b""
        if not data:
            self.closed = True
            self.gone.set()
            return []
        events = self.conn.receive_data(data)
        for event in events:
            self._record(event)
        self.flush()
        return events

    def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        while not done():
            if self.closed:
                raise Closed(f"connection {self.index}: the gateway closed it first")
            self.pump(timeout)

    def request(self, count: int = 1, timeout: float = 10.0) -> list[Request]:
        """Wait until ``count`` requests have ended on this connection; all of them."""
        self.until(lambda: sum(r.ended for r in self.requests.values()) >= count, timeout)
        return list(self.requests.values())

    def respond(
        self,
        stream_id: int,
        status: int = 200,
        body: bytes = b"",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        trailers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        head = [(b":status", b"%d" % status), *(headers or [])]
        self.conn.send_headers(stream_id, head, end_stream=not body and not trailers)
        if body:
            self.conn.send_data(stream_id, body, end_stream=not trailers)
        if trailers:
            self.conn.send_headers(stream_id, trailers, end_stream=True)
        self.flush()

    def drain(self, timeout: float = 10.0) -> None:
        """Read until the gateway closes the connection."""
        while not self.closed:
            self.pump(timeout)

    def _record(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            self.requests[event.stream_id] = Request(event.stream_id, headers)
        elif isinstance(event, h2.events.DataReceived):
            self.requests[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.requests[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.resets.append((event.stream_id, int(event.error_code)))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaways.append(int(event.error_code or 0))
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acks += 1
        elif isinstance(event, h2.events.PingReceived):
            self.pings += 1


Script = Callable[[Peer], None]


class ScriptedH2Upstream:
    """``with ScriptedH2Upstream([script0, script1, ...]) as upstream:`` connection ``i``
    runs ``scripts[i]`` (the last one for any later connection)."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.peers: list[Peer] = []
        self.accepted = threading.Semaphore(0)
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedH2Upstream:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._listener.close()
        for peer in self.peers:
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)  # wakes a script blocked in recv()
            peer.sock.close()
        for thread in self._threads:
            thread.join(5)
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def connection(self, index: int, timeout: float = 10.0) -> Peer:
        """The ``index``-th connection, once it has been accepted."""
        while len(self.peers) <= index:
            assert self.accepted.acquire(timeout=timeout), f"no connection {index} came"
        return self.peers[index]

    def _accept(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None)
            )
            conn.initiate_connection()
            peer = Peer(len(self.peers), sock, conn)
            peer.flush()
            self.peers.append(peer)
            script = self.scripts[min(peer.index, len(self.scripts) - 1)]
            thread = threading.Thread(target=self._run, args=(script, peer), daemon=True)
            thread.start()
            self._threads.append(thread)
            self.accepted.release()

    def _run(self, script: Script, peer: Peer) -> None:
        try:
            script(peer)
        except (OSError, Closed):
            pass  # the gateway closed the connection: its test says whether it should have
        except BaseException as error:
            self.errors.append(error)
