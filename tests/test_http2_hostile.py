"""A hostile HTTP/2 client against the Hypercorn engine (the uvicorn engine has no HTTP/2),
with a recording upstream: what the client gets and what the upstream receives.

- a prior-knowledge connection outlives ``header_timeout`` (the HTTP/1.1 head timer the
  preface started used to cut it with HTTP/1.1 bytes written into the HTTP/2 stream);
- rapid reset (HEADERS then RST_STREAM, over and over) is answered GOAWAY
  ``ENHANCE_YOUR_CALM`` with one log line, no traceback;
- a header block spread over CONTINUATION frames is cut at ``max_header_size``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, SettingsFrame

from tests.support.gateway import GatewayProcess
from tests.support.scripted import ScriptedUpstream, ok, raw_connection, request_line

HEADER_TIMEOUT = 0.5

#: ``max_loop_lag = 0``: a 3,000-stream flood holds the worker's loop long enough to start
#: load shedding (its 503s are tests/test_overload.py's business); here, the HTTP/2 rules alone.
CONFIG = """
[gateway]
header_timeout = {timeout}
max_loop_lag = 0

[upstreams.u]
targets = ["{url}"]

[[routes]]
path = "/"
upstream = "u"
"""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def echo(request: bytes, conn: int, index: int) -> bytes:
    return ok(request_line(request))


@pytest.fixture(scope="module")
def side(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, ScriptedUpstream]]:
    upstream = ScriptedUpstream(echo).__enter__()
    config = tmp_path_factory.mktemp("h2") / "gateway.toml"
    config.write_text(CONFIG.format(timeout=HEADER_TIMEOUT, url=upstream.url))
    gateway = GatewayProcess(config, engine="hypercorn").start()
    yield gateway, upstream
    assert gateway.stop() == 0, gateway.logs()
    upstream.__exit__(None, None, None)


def client(sock: socket.socket) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return conn


def get(path: str) -> list[tuple[str, str]]:
    return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "gw")]


def events_until(
    sock: socket.socket, conn: h2.connection.H2Connection, done: type, timeout: float = 10.0
) -> list[h2.events.Event]:
    """Read until an event of type ``done`` (or the connection ends); every event seen."""
    seen: list[h2.events.Event] = []
    sock.settimeout(timeout)
    while True:
        data = sock.recv(65536)
        if not data:
            return seen
        for event in conn.receive_data(data):  # HTTP/1.1 bytes here would raise
            seen.append(event)
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        sock.sendall(conn.data_to_send())
        if any(isinstance(e, done) for e in seen):
            return seen


def status_of(events: list[h2.events.Event]) -> int:
    [head] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    return int(dict(head.headers)[b":status"])


def test_a_prior_knowledge_connection_outlives_the_http1_header_timeout(
    side: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, _ = side
    with raw_connection(gateway.port) as sock:
        conn = client(sock)
        for number in range(4):  # past header_timeout several times over
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, get(f"/alive/{number}"), end_stream=True)
            sock.sendall(conn.data_to_send())
            assert status_of(events_until(sock, conn, h2.events.StreamEnded)) == 200
            time.sleep(HEADER_TIMEOUT)  # what is asserted is that nothing fires meanwhile
    assert "Traceback" not in gateway.logs()
    assert "did not send a complete request head" not in gateway.logs()


def test_rapid_reset_is_answered_with_goaway_enhance_your_calm(
    side: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = side
    before = len(upstream.requests)
    with raw_connection(gateway.port) as sock:
        conn = client(sock)
        for _ in range(3000):  # CVE-2023-44487: open, cancel, open, cancel ...
            stream_id = conn.get_next_available_stream_id()
            conn.send_headers(stream_id, get("/reset"), end_stream=True)
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        with contextlib.suppress(OSError):  # closed while we still wrote: read the GOAWAY
            sock.sendall(conn.data_to_send())
        events = events_until(sock, conn, h2.events.ConnectionTerminated)
    [goaway] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    logs = gateway.logs()
    assert "Traceback" not in logs and "TooManyStreamsError" not in logs
    assert logs.count("rapid reset") == 1
    assert len(upstream.requests) - before < 3000  # most never reached it
    with raw_connection(gateway.port) as sock:  # and the gateway still serves
        conn = client(sock)
        conn.send_headers(1, get("/after"), end_stream=True)
        sock.sendall(conn.data_to_send())
        assert status_of(events_until(sock, conn, h2.events.StreamEnded)) == 200


def header_block(pad: int) -> bytes:
    headers = [*get("/continued"), ("x-pad", "a" * pad)]
    return bytes(hpack.Encoder().encode(headers))


def frames(block: bytes, size: int) -> bytes:
    """``block`` as one HEADERS frame and CONTINUATION frames of ``size`` bytes."""
    pieces = [block[i : i + size] for i in range(0, len(block), size)]
    out = HeadersFrame(1, pieces[0], flags=["END_STREAM"]).serialize()
    for number, piece in enumerate(pieces[1:], start=2):
        flags = ["END_HEADERS"] if number == len(pieces) else []
        out += ContinuationFrame(1, piece, flags=flags).serialize()
    return out


def raw_h2(port: int, data: bytes) -> list[Frame]:
    """Send the preface, SETTINGS and ``data`` as raw frames; the frames that come back,
    until stream 1 ends or the server sends GOAWAY (or closes)."""
    received: list[Frame] = []
    buffer = b""
    with raw_connection(port) as sock:
        with contextlib.suppress(OSError):  # closed while we still wrote: read what came
            sock.sendall(PREFACE + SettingsFrame(0).serialize() + data)
        sock.settimeout(10)
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionError:
                return received
            if not chunk:
                return received
            buffer += chunk
            while len(buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                if len(buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(buffer[9 : 9 + length]))
                buffer = buffer[9 + length :]
                received.append(frame)
                if isinstance(frame, GoAwayFrame) or (
                    frame.stream_id == 1 and "END_STREAM" in frame.flags
                ):
                    return received


def response_status(frames: list[Frame]) -> int | None:
    decoder = hpack.Decoder()
    for frame in frames:
        if isinstance(frame, HeadersFrame) and frame.stream_id == 1:
            return int(dict(decoder.decode(frame.data))[":status"])
    return None


def goaway_code(frames: list[Frame]) -> int | None:
    codes = [f.error_code for f in frames if isinstance(f, GoAwayFrame)]
    return codes[0] if codes else None


def test_a_header_block_is_cut_at_max_header_size(
    side: tuple[GatewayProcess, ScriptedUpstream],
) -> None:
    gateway, upstream = side

    def continued() -> list[bytes]:
        """The /continued requests the upstream received (only this test asks for it)."""
        return [request_line(r) for r in upstream.requests if b"/continued" in request_line(r)]

    # ``upstream.requests`` is ordered by connection, not by time: a request on a pooled
    # connection lands mid-list, so it is counted by path, not sliced by position.
    before = len(continued())
    # Under the limit, over several CONTINUATION frames: an ordinary request.
    small = raw_h2(gateway.port, frames(header_block(10_000), 4096))
    assert response_status(small) == 200
    # Over it: GOAWAY, never a request (a 40 KiB block is 3 frames: h2's own cap is 64).
    big = raw_h2(gateway.port, frames(header_block(40_000), 16384))
    assert goaway_code(big) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert response_status(big) is None
    # A flood of 3 MiB of CONTINUATION frames: cut as soon as the block passes the limit.
    flood = HeadersFrame(1, header_block(10)[:8]).serialize() + b"".join(
        ContinuationFrame(1, b"\x00" * 16384).serialize() for _ in range(200)
    )
    assert goaway_code(raw_h2(gateway.port, flood)) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    # Only this test's blocks ask for /continued: the small one arrived, no other did.
    after = continued()
    assert len(after) == before + 1 and set(after) == {b"GET /continued HTTP/1.1"}
    assert "header block over 16384 bytes" in gateway.logs()
    assert "Traceback" not in gateway.logs()
