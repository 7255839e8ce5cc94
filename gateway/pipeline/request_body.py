"""Reading a client's request body for an upstream: whole (small, replayable), streamed
(large or chunked), with a pause limit between chunks, and ``max_body_size`` enforced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from gateway.asgi_types import Message, Receive
from gateway.edge.context import RequestContext
from gateway.edge.errors import ClientDisconnected, GatewayError

#: Request bodies up to this size with a declared Content-Length are read whole before
#: sending, so that a stale pooled connection can be retried transparently.
BUFFER_LIMIT: Final = 64 * 1024


async def read_all(receive: Receive, first: bytes, declared: int) -> bytes:
    """The rest of a body of ``declared`` bytes (at most :data:`BUFFER_LIMIT`), joined."""
    parts = [first]
    size = len(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > declared:
            raise GatewayError(400, "bad_request", "request body longer than its Content-Length")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def stream_request(
    receive: Receive, first: bytes, limit: int, ctx: RequestContext
) -> AsyncIterator[bytes]:
    """The body as it arrives, counted into ``ctx.bytes_in``; 413 past ``limit``."""
    size = ctx.bytes_in = len(first)
    if limit and size > limit:
        raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        ctx.bytes_in = size
        if limit and size > limit:
            raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def timed(receive: Receive, timeout: float) -> Receive:
    """``receive`` that answers 408 when the client sends no body data for ``timeout`` s."""

    async def timed() -> Message:
        try:
            async with asyncio.timeout(timeout):
                return await receive()
        except TimeoutError:
            raise GatewayError(
                408, "request_timeout", f"no request body data for {timeout:g} s"
            ) from None

    return timed
