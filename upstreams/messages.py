"""The values that cross the seam between the gateway and an upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from upstreams.retry import RetryPolicy

Headers = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterator[bytes]


@dataclass(slots=True)
class UpstreamRequest:
    """A request as it leaves the gateway.

    ``target`` is the raw request-target (path and query, percent-encoding untouched).
    ``headers`` exclude ``Host`` unless ``host`` is None; the upstream adds its own Host
    when ``host`` is None. ``body`` is bytes (replayable) or an async iterator (streamed).
    ``content_length`` is None for a streamed body of unknown length (sent chunked).
    """

    method: bytes
    target: bytes
    headers: Headers
    body: Body = b""
    content_length: int | None = 0
    host: bytes | None = None
    #: The route's deadline and retry policy; None: the upstream's default.
    policy: RetryPolicy | None = None
    #: The client address, for balancers that hash on it.
    client: str = ""
    #: The gateway's id of the request, for the log lines the upstream side writes.
    request_id: str = ""
    #: The client takes response trailers (it sent ``te: trailers`` over HTTP/2): an
    #: HTTP/2 upstream is sent ``te: trailers`` and its trailers are relayed.
    trailers: bool = False


@dataclass(slots=True)
class UpstreamResponse:
    """A response head and its body stream. ``aclose`` must be awaited once the body is done.

    It also says how it was obtained (``sent_to``, ``retries``), for the gateway's logs and
    metrics: the request stays what the gateway built, so one request object could be sent
    twice, and nothing is read back from it. A failure carries the same two fields on the
    raised :class:`~upstreams.errors.UpstreamError`.
    """

    status: int
    headers: Headers
    body: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]
    #: The first body bytes when they arrived with the head, else b"".
    first: bytes = b""
    #: True when ``first`` is the complete body (the hot path then sends it in one message).
    complete: bool = False
    #: The target URL that answered (set by the sender that made the response).
    sent_to: str = ""
    #: How many times the request was sent again before this response (set by retrying).
    retries: int = 0
    #: Seconds this try spent opening its connection (0.0 on a pooled one), and, after
    #: retries, the ``perf_counter()`` at which the try that answered began: what
    #: ``Server-Timing`` tells apart (gateway/pipeline/server_timing.py).
    connect_time: float = 0.0
    answered_try_at: float = 0.0
    #: Trailers that followed the body (HTTP/2 upstreams), set once the body has ended;
    #: None from a sender that cannot receive them (HTTP/1.1).
    trailers: Headers | None = None


class _Empty:
    def __aiter__(self) -> _Empty:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


#: The body stream of a response whose body came whole (``first``), or that has none.
EMPTY: AsyncIterator[bytes] = _Empty()


async def nothing_to_close() -> None:
    return None


def whole(status: int, headers: Headers, body: bytes, sent_to: str = "") -> UpstreamResponse:
    """A response whose body is all here: the hot path sends it in one message."""
    return UpstreamResponse(status, headers, EMPTY, nothing_to_close, body, True, sent_to)
