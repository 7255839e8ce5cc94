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
    #: Set by the sender: the target URL the request went to (for logs and metrics).
    sent_to: str = ""
    #: The route's deadline and retry policy; None: the upstream's default.
    policy: RetryPolicy | None = None
    #: The client address, for balancers that hash on it.
    client: str = ""
    #: Set by the upstream: how many times the request was retried.
    retries: int = 0


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
