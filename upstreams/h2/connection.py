"""One HTTP/2 client connection to an upstream: an asyncio Protocol around hyper-h2.

Why not httpx/httpcore: they cannot carry response trailers (encode/httpx#1149,
encode/httpcore#1012), which gRPC needs, and httpcore's HTTP/2 sender sends no
``te: trailers``. Everything HTTP/2 is hyper-h2's (sans-IO); this module feeds it bytes,
keeps a table of open streams, and wakes the task waiting on each:

- **Streams**, at most the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` and our
  ``max_concurrent_streams``; :attr:`H2Connection.capacity` says how many more it takes.
- **Flow control both ways.** A response's DATA is acknowledged (its window reopened) only
  when the consumer takes it, so a slow client slows the upstream rather than filling the
  gateway's memory. A request body waits for window before each frame.
- **Refused streams are told apart.** RST_STREAM ``REFUSED_STREAM``, and a GOAWAY's streams
  above its ``last_stream_id``, were never processed (RFC 9113 8.7): they fail with
  :class:`StreamRefused`, which the sender may replay on another connection. Nothing else
  is replayed.
- **GOAWAY with streams in flight**: the streams the server did take run to their end;
  the connection takes no new one. (hyper-h2 closes its whole state machine on GOAWAY, so
  it is moved back to open while such streams remain: ``state_machine`` is checked at
  start-up by gateway/server/private_names.py.)
- **PING** every :data:`PING_INTERVAL` seconds while streams are open; no answer within
  :data:`PING_TIMEOUT` and the connection is closed, its streams failed.
- **A flood of control frames** (SETTINGS or PING, each of which hyper-h2 answers) beyond
  :data:`CONTROL_FRAME_ALLOWANCE` plus :data:`CONTROL_FRAMES_PER_FRAME` per HEADERS or DATA
  frame closes the connection with GOAWAY ``ENHANCE_YOUR_CALM`` (Envoy's rule for
  inbound control frames).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState

from upstreams.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout

Headers = list[tuple[bytes, bytes]]

PING_INTERVAL: Final = 10.0
PING_TIMEOUT: Final = 5.0
CONTROL_FRAME_ALLOWANCE: Final = 100
CONTROL_FRAMES_PER_FRAME: Final = 2
#: Our receive window per stream, and the connection's (hyper-h2's defaults are 64 KiB).
STREAM_WINDOW: Final = 1 << 20
CONNECTION_WINDOW: Final = 16 << 20


class FrameBoundaries:
    """Follows frame boundaries across reads (a frame: a 9-byte header, its length in the
    first 3) to find where a GOAWAY ends; only headers are looked at, never payloads."""

    __slots__ = ("_goaway", "_head", "_skip")

    GOAWAY: Final = 0x7

    def __init__(self) -> None:
        self._skip = 0  # payload bytes of the current frame still to come
        self._goaway = False  # ... and that frame is a GOAWAY
        self._head = b""  # a frame header split across reads

    def after_goaway(self, data: bytes) -> int | None:
        """The offset in ``data`` just past the first GOAWAY frame ending in it, if any;
        the boundaries are followed up to there (or to the end of ``data``)."""
        at, size = 0, len(data)
        while at < size:
            if self._skip:
                step = min(self._skip, size - at)
                self._skip -= step
                at += step
                if not self._skip and self._goaway:
                    self._goaway = False
                    return at
                continue
            need = 9 - len(self._head)
            head = self._head + data[at : at + need]
            at += len(head) - len(self._head)
            if len(head) < 9:
                self._head = head
                return None
            self._head = b""
            self._skip = int.from_bytes(head[:3], "big")
            self._goaway = head[3] == self.GOAWAY
            if not self._skip and self._goaway:  # (a GOAWAY has at least 8 payload bytes)
                self._goaway = False
                return at
        return None


class StreamRefused(UpstreamProtocolError):
    """The server refused the stream before processing it: safe to send again elsewhere."""


class H2Stream:
    """One request/response exchange on an :class:`H2Connection`."""

    __slots__ = (
        "_waiter",
        "_window",
        "chunks",
        "conn",
        "ended",
        "error",
        "head",
        "id",
        "sent_end",
        "trailers",
    )  # fmt: skip

    def __init__(self, stream_id: int, conn: H2Connection) -> None:
        self.id = stream_id
        self.conn = conn
        self.head: asyncio.Future[tuple[int, Headers]] = conn.loop.create_future()
        #: DATA received and not yet taken: (bytes, flow-controlled length).
        self.chunks: deque[tuple[bytes, int]] = deque()
        #: The response ended (END_STREAM received) / the request did (END_STREAM sent).
        self.ended = False
        self.sent_end = False
        self.error: UpstreamError | None = None
        #: The response's trailers, once they came (None: none came).
        self.trailers: Headers | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._window: asyncio.Future[None] | None = None

    # -- the response --------------------------------------------------------------------
    async def read(self, timeout: float) -> bytes:
        """The next piece of the response body; b"" once it ended."""
        while True:
            if self.chunks:
                data, length = self.chunks.popleft()
                self.conn.acknowledge(self.id, length)
                return data
            if self.error is not None:
                raise self.error
            if self.ended:
                return b""
            self._waiter = self.conn.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                raise UpstreamTimeout("upstream read timed out", phase="read") from None
            finally:
                self._waiter = None

    def wake(self) -> None:
        for waiter in (self._waiter, self._window):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def fail(self, error: UpstreamError) -> None:
        if self.error is None and not self.ended:
            self.error = error
            error.before_response = not self.head.done()
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: a failure nobody awaited is not logged
        self.wake()

    # -- the request ---------------------------------------------------------------------
    async def wait_window(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error
        self._window = self.conn.loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._window
        except TimeoutError:
            raise UpstreamTimeout("upstream write timed out", phase="write") from None
        finally:
            self._window = None
        if self.error is not None:
            raise self.error


class H2Connection(asyncio.Protocol):
    """A client connection; the sender (``upstreams/h2/sender.py``) opens streams on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_streams: int) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: True once a GOAWAY came or was sent: no new stream.
        self.going_away = False
        self.streams: dict[int, H2Stream] = {}
        self.connect_time = 0.0
        self.last_used = 0.0
        #: Called with this connection when it can take a stream again, or closed.
        self.on_change: Callable[[H2Connection], None] | None = None
        self._max_streams = max_streams
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._control = 0
        self._credit = CONTROL_FRAME_ALLOWANCE
        self._ping: asyncio.TimerHandle | None = None
        self._pong: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self._frames = FrameBoundaries()
        self._early: bytearray | None = bytearray()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def start(self) -> None:
        """Send the preface and settings: called by the sender once the connection is the
        right one (for TLS, once ALPN chose h2), never before, so a server that did not
        choose h2 is sent no HTTP/2 byte."""
        h2c = self._h2
        h2c.initiate_connection()
        h2c.update_settings(
            {
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            }
        )
        h2c.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        self._ping = self.loop.call_later(PING_INTERVAL, self._send_ping)
        early, self._early = self._early, None
        if early:
            self.data_received(bytes(early))

    def data_received(self, data: bytes) -> None:
        if self._early is not None:  # before start(): the server's settings, kept for it
            self._early += data
            return
        # A GOAWAY is fed to hyper-h2 alone, up to its last byte: hyper-h2 closes its state
        # machine on it and would refuse the frames after it in the same read (the
        # responses of the streams the GOAWAY spared) before _goaway could reopen it.
        cut = self._frames.after_goaway(data)
        while cut is not None:
            self._receive(data[:cut])
            if self.closed:
                return
            data = data[cut:]
            cut = self._frames.after_goaway(data)
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            self.flush()  # hyper-h2 wrote its GOAWAY
            self.close(UpstreamProtocolError(f"HTTP/2 protocol error from upstream: {error}"))
            return
        for event in events:
            self._handle(event)
            if self.closed:
                return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        reason = f": {exc}" if exc else ""
        self.close(UpstreamProtocolError(f"upstream closed the HTTP/2 connection{reason}"))

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- what the sender uses --------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if self.closed or self.going_away or self._h2.state_machine.state is ConnectionState.CLOSED:
            return 0
        limit = min(self._max_streams, self._h2.remote_settings.max_concurrent_streams)
        return max(0, limit - len(self.streams))

    def open_stream(self, headers: Headers, end_stream: bool) -> H2Stream:
        stream_id = self._h2.get_next_available_stream_id()
        stream = H2Stream(stream_id, self)
        self.streams[stream_id] = stream
        self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        stream.sent_end = end_stream
        self.flush()
        return stream

    async def send_body(self, stream: H2Stream, data: bytes, end: bool, timeout: float) -> None:
        """Send ``data`` on ``stream`` as flow control allows, then END_STREAM if ``end``."""
        view = memoryview(data)
        h2c = self._h2
        while view:
            if stream.error is not None:
                raise stream.error
            window = h2c.local_flow_control_window(stream.id)
            if window <= 0:
                await stream.wait_window(timeout)
                continue
            size = min(window, h2c.max_outbound_frame_size, len(view))
            h2c.send_data(stream.id, view[:size].tobytes())
            view = view[size:]
            self.flush()
            await self.drain(timeout)
        if end:
            if stream.error is not None:
                raise stream.error
            h2c.end_stream(stream.id)
            stream.sent_end = True
            self.flush()

    def reset(
        self, stream: H2Stream, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.CANCEL
    ) -> None:
        """Give the stream up (a client gone, a deadline): RST_STREAM unless it ended."""
        if self.streams.pop(stream.id, None) is None:
            return
        if not self.closed and not (stream.ended and stream.sent_end):
            with contextlib.suppress(h2.exceptions.H2Error):  # closed on the server's side
                self._h2.reset_stream(stream.id, code)
            self.flush()
        self._changed()

    def finish(self, stream: H2Stream) -> None:
        """The response was read to its end."""
        if self.streams.pop(stream.id, None) is not None:
            self._changed()

    def acknowledge(self, stream_id: int, length: int) -> None:
        if length and not self.closed:
            try:
                self._h2.acknowledge_received_data(length, stream_id)
            except h2.exceptions.H2Error:
                return
            self.flush()

    async def drain(self, timeout: float) -> None:
        writable = self._writable
        if writable is not None:
            try:
                async with asyncio.timeout(timeout):
                    await writable
            except TimeoutError:
                raise UpstreamTimeout("upstream write timed out", phase="write") from None

    def flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def close(self, error: UpstreamError | None = None) -> None:
        """Fail every open stream with ``error`` and close the connection."""
        if self.closed:
            return
        self.closed = True
        for timer in (self._ping, self._pong):
            if timer is not None:
                timer.cancel()
        failure = error or UpstreamProtocolError("HTTP/2 connection closed")
        for stream in list(self.streams.values()):
            stream.fail(failure)
        self.streams.clear()
        if self.transport is not None:
            if error is None:  # our own close: say goodbye
                try:
                    self._h2.close_connection()
                    self.flush()
                except h2.exceptions.H2Error:
                    pass
            self.transport.close()
        self._changed()

    # -- events ----------------------------------------------------------------------------
    def _handle(self, event: h2.events.Event) -> None:
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.DataReceived):
            self._credit += CONTROL_FRAMES_PER_FRAME
            if stream is None:  # a stream we gave up: give its window back
                self.acknowledge(event.stream_id, event.flow_controlled_length)
                return
            stream.chunks.append((event.data, event.flow_controlled_length))
            stream.wake()
        elif isinstance(event, h2.events.ResponseReceived):
            self._credit += CONTROL_FRAMES_PER_FRAME
            if stream is not None and not stream.head.done():
                headers = event.headers or []
                status = next((int(v) for n, v in headers if n == b":status"), 0)
                stream.head.set_result((status, [(n, v) for n, v in headers if n[:1] != b":"]))
        elif isinstance(event, h2.events.TrailersReceived):
            self._credit += CONTROL_FRAMES_PER_FRAME
            if stream is not None:
                stream.trailers = [(n, v) for n, v in event.headers or [] if n[:1] != b":"]
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.ended = True
                if not stream.head.done():
                    stream.fail(
                        UpstreamProtocolError("upstream ended the stream without a response")
                    )
                stream.wake()
        elif isinstance(event, h2.events.StreamReset):
            if stream is not None:
                self.streams.pop(stream.id, None)
                code = event.error_code
                if code == h2.errors.ErrorCodes.REFUSED_STREAM and not stream.head.done():
                    stream.fail(StreamRefused("upstream refused the stream (REFUSED_STREAM)"))
                else:
                    name = getattr(code, "name", code)
                    stream.fail(UpstreamProtocolError(f"upstream reset the stream ({name})"))
                self._changed()
        elif isinstance(event, h2.events.WindowUpdated):
            targets = self.streams.values() if not event.stream_id else [stream] if stream else []
            for each in targets:
                each.wake()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
        elif isinstance(event, (h2.events.RemoteSettingsChanged, h2.events.PingReceived)):
            self._control += 1
            if self._control > self._credit:
                # hyper-h2 has queued an answer to each frame of this read: none goes out.
                self._h2.clear_outbound_data_buffer()
                self._h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                self.flush()
                self.close(UpstreamProtocolError("upstream flooded control frames (SETTINGS/PING)"))
                return
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self._changed()  # MAX_CONCURRENT_STREAMS may have grown
        elif isinstance(event, h2.events.PingAckReceived) and self._pong is not None:
            self._pong.cancel()
            self._pong = None

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.going_away = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last:
                self.streams.pop(stream_id)
                stream.fail(StreamRefused(f"upstream sent GOAWAY (last stream {last})"))
        if self.streams and event.error_code == h2.errors.ErrorCodes.NO_ERROR:
            # The server takes these to their end: let hyper-h2 receive their frames.
            self._h2.state_machine.state = ConnectionState.CLIENT_OPEN
        else:
            name = getattr(event.error_code, "name", event.error_code)
            self.close(UpstreamProtocolError(f"upstream sent GOAWAY ({name})"))
            return
        self._changed()

    def _send_ping(self) -> None:
        self._ping = None
        if self.closed:
            return
        if self.streams:
            self._h2.ping(b"quartgat")
            self.flush()
            self._pong = self.loop.call_later(PING_TIMEOUT, self._no_pong)
        self._ping = self.loop.call_later(PING_INTERVAL, self._send_ping)

    def _no_pong(self) -> None:
        self._pong = None
        self.close(
            UpstreamProtocolError(f"upstream did not answer a PING within {PING_TIMEOUT:g} s")
        )

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)
