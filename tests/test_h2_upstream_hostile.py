"""The HTTP/2 sender (upstreams/h2/) against a scripted, hostile upstream
(tests/support/h2_scripted.py): what the client got and what each upstream connection
received, exactly.

Through a real gateway: trailers without END_STREAM, a reset mid-body, a GOAWAY with streams
in flight, REFUSED_STREAM and other resets, a SETTINGS flood. The sender alone, over real
sockets (the clock of its PING made short): an unanswered PING, and flow control holding an
upstream that sends faster than its reader takes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import h2.errors
import h2.events
import httpx
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame

from tests.support.gateway import GatewayProcess
from tests.support.grpc_upstream import frame, raw_call
from tests.support.h2_scripted import Peer, ScriptedH2Upstream
from upstreams.errors import UpstreamError
from upstreams.h2 import H2Sender
from upstreams.h2 import connection as h2_connection
from upstreams.h2.connection import FrameBoundaries
from upstreams.messages import UpstreamRequest
from upstreams.spec import TargetSpec, UpstreamSpec

CONFIG = """
[upstreams.h2]
targets = ["{url}"]
http2 = true

[[routes]]
name = "h2"
path = "/"
upstream = "h2"
"""

Start = Callable[..., GatewayProcess]


def answer_every_request(peer: Peer) -> None:
    """A well-behaved upstream: each request answered with its path."""
    answered: set[int] = set()
    while not peer.closed:
        for request in peer.request(len(answered) + 1, timeout=30):
            if request.ended and request.stream_id not in answered:
                answered.add(request.stream_id)
                peer.respond(request.stream_id, body=request.headers[b":path"])


def gateway_for(start: Start, upstream: ScriptedH2Upstream) -> GatewayProcess:
    return start(CONFIG.format(url=upstream.url))


def test_trailers_without_end_of_stream_end_the_call_unavailable_never_ok(
    make_gateway: Start,
) -> None:
    def broken(peer: Peer) -> None:
        (request,) = peer.request()
        sid = request.stream_id
        peer.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        peer.conn.send_data(sid, frame(b"partial"))
        peer.flush()
        # Trailers that claim success, without END_STREAM: not valid HTTP/2.
        trailers = HeadersFrame(sid)
        trailers.data = peer.conn.encoder.encode([(b"grpc-status", b"0")])
        trailers.flags.add("END_HEADERS")
        peer.sock.sendall(trailers.serialize())
        peer.drain()

    with ScriptedH2Upstream([broken, answer_every_request]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        events = raw_call(gateway.port, b"/svc/Call")
        # hyper-h2 refuses the whole read the bad frame came in, so the head and message
        # may or may not have been relayed first; the call's end is UNAVAILABLE either way.
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert data in (b"", frame(b"partial"))
        (ending,) = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        trailers = dict(ending.headers)
        assert trailers[b"grpc-status"] == b"14"  # UNAVAILABLE, never the upstream's 0
        assert trailers[b"grpc-message"].startswith(b"upstream_reset")
        first = upstream.connection(0)
        assert first.gone.wait(10) and first.goaways == [h2.errors.ErrorCodes.PROTOCOL_ERROR]
        # The gateway goes on, on a new connection.
        assert httpx.get(gateway.url + "/after", timeout=10).text == "/after"
        assert next(iter(upstream.connection(1).requests.values())).headers[b":path"] == b"/after"


def test_a_reset_mid_body_truncates_the_response_and_spares_the_connection(
    make_gateway: Start,
) -> None:
    def reset_then_serve(peer: Peer) -> None:
        (request,) = peer.request()
        sid = request.stream_id
        peer.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"100000")])
        peer.conn.send_data(sid, b"x" * 1000)
        peer.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        peer.flush()
        following = peer.request(2)[-1]  # the next request, on this same connection
        peer.respond(following.stream_id, body=b"next")
        peer.drain()

    with ScriptedH2Upstream([reset_then_serve]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        with pytest.raises(httpx.RemoteProtocolError):  # never a complete-looking response
            httpx.get(gateway.url + "/big", timeout=10)
        assert httpx.get(gateway.url + "/next", timeout=10).text == "next"
        assert len(upstream.peers) == 1  # a stream's reset is not the connection's
        paths = [r.headers[b":path"] for r in upstream.connection(0).requests.values()]
        assert paths == [b"/big", b"/next"]


def test_goaway_lets_the_taken_stream_finish_and_replays_the_refused_one_once(
    make_gateway: Start,
) -> None:
    def goaway_after_two(peer: Peer) -> None:
        first, _second = sorted(peer.request(2), key=lambda r: r.stream_id)
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = first.stream_id
        goaway.error_code = 0
        peer.sock.sendall(goaway.serialize())  # the second stream was never processed
        peer.respond(first.stream_id, body=first.headers[b":path"])
        peer.drain()  # the gateway closes the connection once the first stream ended

    with ScriptedH2Upstream([goaway_after_two, answer_every_request]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        with ThreadPoolExecutor(2) as pool:
            bodies = list(
                pool.map(lambda p: httpx.get(gateway.url + p, timeout=15).text, ["/a", "/b"])
            )
        assert bodies == ["/a", "/b"]
        old, new = upstream.connection(0), upstream.connection(1)
        taken, refused = sorted(old.requests.values(), key=lambda r: r.stream_id)
        assert {taken.headers[b":path"], refused.headers[b":path"]} == {b"/a", b"/b"}
        # Exactly the refused request, exactly once, on the new connection.
        assert [r.headers[b":path"] for r in new.requests.values()] == [refused.headers[b":path"]]
        assert old.gone.wait(10)


def test_a_refused_stream_is_sent_once_more_on_another_connection(make_gateway: Start) -> None:
    def refuse(peer: Peer) -> None:
        (request,) = peer.request()
        peer.conn.reset_stream(request.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        peer.flush()
        peer.drain()

    with ScriptedH2Upstream([refuse, answer_every_request]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        assert httpx.get(gateway.url + "/once", timeout=10).text == "/once"
        assert [r.headers[b":path"] for r in upstream.connection(0).requests.values()] == [b"/once"]
        assert [r.headers[b":path"] for r in upstream.connection(1).requests.values()] == [b"/once"]


def test_any_other_reset_before_the_head_is_a_502_and_never_replayed(make_gateway: Start) -> None:
    seen: list[bytes] = []

    def reset_everything(peer: Peer) -> None:
        while not peer.closed:
            for request in peer.request(len(seen) + 1, timeout=30)[len(seen) :]:
                seen.append(request.headers[b":path"])
                peer.conn.reset_stream(request.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                peer.flush()

    with ScriptedH2Upstream([reset_everything]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        response = httpx.get(gateway.url + "/x", timeout=10)
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_reset"
        assert response.json()["detail"].endswith("upstream reset the stream (INTERNAL_ERROR)")
        assert seen == [b"/x"]
        assert len(upstream.peers) == 1


def test_a_settings_flood_is_answered_enhance_your_calm(make_gateway: Start) -> None:
    def flood(peer: Peer) -> None:
        peer.request()
        peer.sock.sendall(SettingsFrame(0).serialize() * 5000)
        peer.drain()

    with ScriptedH2Upstream([flood, answer_every_request]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        assert httpx.get(gateway.url + "/flood", timeout=10).status_code == 502
        first = upstream.connection(0)
        assert first.gone.wait(10)
        assert first.goaways == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
        # It answered no more than its allowance of the 5,000 before it closed.
        assert first.settings_acks <= h2_connection.CONTROL_FRAME_ALLOWANCE + 10
        assert httpx.get(gateway.url + "/calm", timeout=10).text == "/calm"


GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def test_a_grpc_response_without_grpc_status_ends_internal(make_gateway: Start) -> None:
    def no_status(peer: Peer) -> None:
        (request,) = peer.request()
        assert request.headers[b"te"] == b"trailers"  # forwarded, as gRPC servers require
        peer.conn.send_headers(request.stream_id, GRPC_HEAD)
        peer.conn.send_data(request.stream_id, frame(b"reply"), end_stream=True)  # no trailers
        peer.flush()
        peer.drain()

    with ScriptedH2Upstream([no_status]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        events = raw_call(gateway.port, b"/svc/Call")
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert data == frame(b"reply")
        (ending,) = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert dict(ending.headers)[b"grpc-status"] == b"13"


def test_grpc_timeout_bounds_the_whole_call_after_its_head(make_gateway: Start) -> None:
    given_up = threading.Event()

    def head_then_silence(peer: Peer) -> None:
        (request,) = peer.request()
        peer.conn.send_headers(request.stream_id, GRPC_HEAD)
        peer.conn.send_data(request.stream_id, frame(b"first"))
        peer.flush()
        peer.until(lambda: bool(peer.resets), timeout=30)  # the gateway gives the call up
        given_up.set()

    with ScriptedH2Upstream([head_then_silence]) as upstream:
        gateway = gateway_for(make_gateway, upstream)
        events = raw_call(gateway.port, b"/svc/Call", [(b"grpc-timeout", b"500m")])
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert data == frame(b"first")
        (ending,) = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert dict(ending.headers)[b"grpc-status"] == b"4"  # DEADLINE_EXCEEDED
        assert given_up.wait(10)
        assert upstream.connection(0).resets == [(1, h2.errors.ErrorCodes.CANCEL)]


def test_a_stream_outlives_the_route_timeout_while_its_messages_keep_coming(
    make_gateway: Start,
) -> None:
    """The route's timeout is to the head; after it, only silence longer than read_timeout
    ends a call, not its length."""
    sent = threading.Event()

    def trickle(peer: Peer) -> None:
        (request,) = peer.request()
        peer.conn.send_headers(request.stream_id, GRPC_HEAD)
        peer.flush()
        for i in range(6):  # 6 x 0.2 s: over twice the route's timeout
            peer.conn.send_data(request.stream_id, frame(b"%d" % i))
            peer.flush()
            sent.wait(0.2)
        peer.conn.send_headers(request.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        peer.flush()
        peer.drain()

    with ScriptedH2Upstream([trickle]) as upstream:
        gateway = make_gateway(
            CONFIG.format(url=upstream.url).replace(
                'upstream = "h2"\n', 'upstream = "h2"\ntimeout = 0.5\n'
            )
        )
        events = raw_call(gateway.port, b"/svc/Stream")
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        assert data == b"".join(frame(b"%d" % i) for i in range(6))
        (ending,) = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        assert dict(ending.headers)[b"grpc-status"] == b"0"


# ---- the sender alone ----------------------------------------------------------------------


def sender_for(upstream: ScriptedH2Upstream, **spec: object) -> H2Sender:
    target = TargetSpec("http", "127.0.0.1", upstream.port)
    return H2Sender(target, UpstreamSpec("h2", (target,), http2=True, **spec))  # type: ignore[arg-type]


async def test_an_unanswered_ping_closes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2_connection, "PING_INTERVAL", 0.1)
    monkeypatch.setattr(h2_connection, "PING_TIMEOUT", 0.2)
    release = threading.Event()

    def silent(peer: Peer) -> None:
        peer.request()
        release.wait(30)  # reads nothing more: no PING is ever acknowledged

    with ScriptedH2Upstream([silent]) as upstream:
        sender = sender_for(upstream, read_timeout=60.0)
        try:
            with pytest.raises(UpstreamError, match="did not answer a PING"):
                await asyncio.wait_for(sender.send(UpstreamRequest(b"GET", b"/", [])), 30)
        finally:
            release.set()
            await sender.aclose()


async def test_flow_control_holds_an_upstream_that_sends_faster_than_its_reader() -> None:
    size = 4 << 20
    blocked = threading.Event()
    sent_when_blocked: list[int] = []

    def fast(peer: Peer) -> None:
        (request,) = peer.request()
        sid = request.stream_id
        peer.conn.send_headers(sid, [(b":status", b"200")])
        sent = 0
        while sent < size:
            window = min(peer.conn.local_flow_control_window(sid), size - sent)
            if window <= 0:
                if not blocked.is_set():
                    sent_when_blocked.append(sent)
                    blocked.set()
                peer.pump(30)  # wait for a WINDOW_UPDATE
                continue
            chunk = min(window, peer.conn.max_outbound_frame_size)
            peer.conn.send_data(sid, bytes([sent % 251]) * chunk)
            sent += chunk
            peer.flush()
        peer.conn.end_stream(sid)
        peer.flush()
        peer.drain(30)

    with ScriptedH2Upstream([fast]) as upstream:
        sender = sender_for(upstream)
        try:
            response = await sender.send(UpstreamRequest(b"GET", b"/", []))
            # Nothing read yet: the upstream stops at the stream's window, not the 4 MiB.
            await asyncio.get_running_loop().run_in_executor(None, blocked.wait, 30)
            assert sent_when_blocked and sent_when_blocked[0] <= h2_connection.STREAM_WINDOW
            received = bytearray()
            async for chunk in response.body:
                received += chunk
            await response.aclose()
            assert len(received) == size
        finally:
            await sender.aclose()


def test_frame_boundaries_find_a_goaways_end_however_the_bytes_are_cut() -> None:
    """What lets a GOAWAY be handled before the frames after it in the same read."""
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 1
    data = DataFrame(1)
    data.data = b"x" * 100
    head = HeadersFrame(1)
    head.data = b"abc"
    head.flags.add("END_HEADERS")
    wire = data.serialize() + goaway.serialize() + head.serialize()
    end = len(data.serialize()) + len(goaway.serialize())
    assert FrameBoundaries().after_goaway(wire) == end
    for cut in range(1, len(wire)):
        boundaries = FrameBoundaries()
        first = boundaries.after_goaway(wire[:cut])
        if first is not None:
            assert first == end, cut
        else:
            rest = boundaries.after_goaway(wire[cut:])
            assert rest is not None and cut + rest == end, cut
    assert FrameBoundaries().after_goaway(data.serialize() + head.serialize()) is None


async def test_streams_are_bounded_per_connection_and_connections_per_target() -> None:
    hold = threading.Event()

    def held(peer: Peer) -> None:
        requests = peer.request(2, timeout=30)  # two streams at once on this connection
        hold.wait(30)
        for request in requests:
            peer.respond(request.stream_id, body=b"done")
        peer.drain(30)

    with ScriptedH2Upstream([held]) as upstream:
        sender = sender_for(upstream, max_concurrent_streams=2, max_connections=2, pool_timeout=0.3)
        try:
            calls = [
                asyncio.ensure_future(sender.send(UpstreamRequest(b"GET", b"/%d" % i, [])))
                for i in range(5)
            ]
            # Two connections of two streams: the fifth call finds no stream in time.
            done, _ = await asyncio.wait(calls, timeout=30, return_when=asyncio.FIRST_EXCEPTION)
            failed = [c for c in done if c.exception() is not None]
            assert len(failed) == 1
            assert "no free HTTP/2 stream" in str(failed[0].exception())
            assert len(upstream.peers) == 2
            assert [len(p.requests) for p in upstream.peers] == [2, 2]
            hold.set()
            for call in calls:
                if call not in failed:
                    response = await call
                    assert b"".join([c async for c in response.body]) == b"done"
                    await response.aclose()
        finally:
            hold.set()
            await sender.aclose()
