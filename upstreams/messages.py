"""The values that cross the seam between the gateway and an upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

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
    #: Set by the sender: the target URL the request went to (for logs and metrics).
    sent_to: str = ""


@dataclass(slots=True)
class UpstreamResponse:
    """A response head and its body stream. ``aclose`` must be awaited once the body is done."""

    status: int
    headers: Headers
    body: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]
    #: The first body bytes when they arrived with the head, else b"".
    first: bytes = b""
    #: True when ``first`` is the complete body (the hot path then sends it in one message).
    complete: bool = False
