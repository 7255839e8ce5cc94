"""The upstream response parser, differentially against h11 as the reference.

For generated response streams (well-formed, then mutated byte by byte) fed in random
pieces, with and without a HEAD request: whenever our parser accepts a response, h11 must
accept it too and agree on the status, the headers, the body bytes and where the message
ends. Our parser may reject what h11 accepts (it is stricter on purpose); it may never
accept something h11 rejects or read it differently. And a response it calls reusable
must end exactly where h11's does, with no byte left over.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from upstreams.h1.parser import MessageEnd, ParseError, ResponseHead, ResponseParser

Outcome = tuple[int, list[tuple[bytes, bytes]], bytes, int, bool] | None


def ours(stream: bytes, cuts: list[int], head: bool, eof: bool) -> Outcome:
    """(status, headers, body, bytes consumed, reusable), or None if rejected/incomplete."""
    parser = ResponseParser()
    parser.expect(head=head)
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    body = bytearray()
    end: MessageEnd | None = None
    pieces = _split(stream, cuts)
    fed = 0
    consumed = 0
    try:
        for number, piece in enumerate(pieces):
            fed += len(piece)
            for event in parser.feed(piece):
                if isinstance(event, ResponseHead):
                    status, headers = event.status, event.headers
                elif isinstance(event, MessageEnd):
                    end = event
                else:
                    body += event
            if end is not None:
                consumed = fed - len(parser.tail)
                later = b"".join(pieces[number + 1 :])
                if end.reusable and later:
                    # Bytes after a clean end arrive while the connection is idle: the
                    # parser must refuse them, which retires the connection.
                    with pytest.raises(ParseError):
                        parser.feed(later)
                    end = MessageEnd(False)
                break
        if end is None and eof:
            for event in parser.feed_eof():
                assert isinstance(event, MessageEnd)
                end = event
            consumed = fed - len(parser.tail)
    except ParseError:
        return None
    if end is None:
        return None
    return status, headers, bytes(body), consumed, end.reusable


def reference(stream: bytes, head: bool, eof: bool) -> Outcome:
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(method=b"HEAD" if head else b"GET", target=b"/", headers=[(b"host", b"x")])
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(stream)
    if eof:
        conn.receive_data(b"")
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = [(n.lower(), v) for n, v in event.headers.raw_items()]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError:
        return None
    leftover, _closed = conn.trailing_data
    return status, headers, bytes(body), len(stream) - len(leftover), True


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(stream[start:point])
        start = point
    pieces.append(stream[start:])
    return pieces


def compare(stream: bytes, cuts: list[int], head: bool, eof: bool) -> None:
    mine = ours(stream, cuts, head, eof)
    if mine is None:
        return  # stricter than the reference is allowed
    ref = reference(stream, head, eof)
    assert ref is not None, f"we accepted what h11 rejects: {stream!r}"
    status, headers, body, consumed, reusable = mine
    assert (status, headers, body) == ref[:3], stream
    assert consumed == ref[3], f"message ends differ ({consumed} vs {ref[3]}): {stream!r}"
    if reusable:
        assert consumed == len(stream), "reusable, yet bytes were left over"


# ---- generated responses ---------------------------------------------------------------

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=12)
VALUE = st.binary(max_size=20).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
STATUS = st.sampled_from([100, 103, 200, 201, 204, 206, 301, 304, 404, 500, 599])


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(STATUS)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    reason = draw(st.sampled_from([b" OK", b"", b" Some Reason", b" "]))
    lines = [b"%b %d%b" % (version, status, reason)]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(
            draw(TOKEN).encode() + b":" + draw(st.sampled_from([b" ", b"", b"\t"])) + draw(VALUE)
        )
    body = draw(st.binary(max_size=64))
    framing = draw(st.sampled_from(["length", "chunked", "close", "none", "both", "two-lengths"]))
    if framing == "length":
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "two-lengths":
        lines += [b"Content-Length: %d" % len(body)] * 2
        payload = body
    elif framing in ("chunked", "both"):
        lines.append(b"Transfer-Encoding: chunked")
        if framing == "both":
            lines.append(b"Content-Length: %d" % len(body))
        payload = (
            b"".join(
                b"%x%b\r\n%b\r\n" % (len(c), draw(st.sampled_from([b"", b";x=1", b" "])), c)
                for c in _chunks(body, draw(st.integers(1, 16)))
            )
            + b"0\r\n"
            + draw(st.sampled_from([b"", b"x-trailer: 1\r\n"]))
            + b"\r\n"
        )
    elif framing == "close":
        lines.append(b"Connection: close")
        payload = body
    else:
        payload = body
    if draw(st.booleans()):
        lines.append(b"Connection: " + draw(st.sampled_from([b"close", b"keep-alive"])))
    stream = b"\r\n".join(lines) + b"\r\n\r\n" + payload
    if status < 200:  # an interim response, then a final one
        stream += b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    return stream + draw(st.sampled_from([b"", b"", b"HTTP/1.1 200 OK\r\n\r\n", b"junk"]))


def _chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    stream = bytearray(draw(responses()))
    for _ in range(draw(st.integers(1, 4))):
        if not stream:
            break
        at = draw(st.integers(0, len(stream) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from(b"\r\n \t:\x00\x01\x7f0aZ;,\xff"))
        if action == "flip":
            stream[at] = byte
        elif action == "insert":
            stream.insert(at, byte)
        else:
            del stream[at]
    return bytes(stream)


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(responses(), st.lists(st.integers(0, 400), max_size=4), st.booleans(), st.booleans())
@example(
    b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    [],
    False,
    False,
)
@example(
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n\r\n", [], True, False
)
def test_generated_responses_agree_with_h11(
    stream: bytes, cuts: list[int], head: bool, eof: bool
) -> None:
    compare(stream, cuts, head, eof)


@FUZZ
@given(mutated(), st.lists(st.integers(0, 400), max_size=4), st.booleans(), st.booleans())
def test_mutated_responses_are_rejected_or_read_as_h11_reads_them(
    stream: bytes, cuts: list[int], head: bool, eof: bool
) -> None:
    compare(stream, cuts, head, eof)


@pytest.mark.parametrize(
    "stream",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ],
)
def test_a_clean_exchange_is_reusable_and_consumes_exactly_the_message(stream: bytes) -> None:
    outcome = ours(stream, [], False, False)
    assert outcome is not None and outcome[4] is True and outcome[3] == len(stream)


@pytest.mark.parametrize(
    ("stream", "head"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", False),  # bytes left over
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),  # HEAD announcing a body
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", False),
    ],
)
def test_doubtful_framing_is_never_reusable(stream: bytes, head: bool) -> None:
    outcome = ours(stream, [], head, False)
    assert outcome is not None and outcome[4] is False


def test_bytes_when_no_response_is_expected_are_an_error() -> None:
    parser = ResponseParser()
    with pytest.raises(ParseError):
        parser.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    parser = ResponseParser()
    parser.expect(head=False)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ParseError):
        parser.feed(b"x")
