"""An httpx transport over quartgate's upstream pools.

With it, ``httpx.AsyncClient(transport=UpstreamTransport(upstream))`` (``Upstream.client``)
speaks httpx's whole client API, for user code in blueprints, over the same O(1) pools and
balancer as the proxy hot path. The hot path itself calls :meth:`Upstream.send` directly,
because a proxy must not follow redirects or keep a cookie jar, which is what the client
layer adds; health checks (``upstreams/health.py``) call each target's sender directly, since
a probe must reach one chosen target, never whichever one the balancer picks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from upstreams.errors import (
    PoolExhausted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sends

_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding"})


class UpstreamTransport(httpx.AsyncBaseTransport):
    def __init__(self, sender: Sends) -> None:
        self._sender = sender

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [(n.lower(), v) for n, v in request.headers.raw if n.lower() not in _FRAMING]
        length_header = request.headers.get("content-length")
        body: bytes | AsyncIterator[bytes]
        if isinstance(request.stream, httpx.ByteStream):
            body = b"".join([chunk for chunk in request.stream])
            length: int | None = len(body)
        else:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            body = request.stream.__aiter__()
            length = int(length_header) if length_header is not None else None
        upstream_request = UpstreamRequest(
            request.method.encode("ascii"),
            request.url.raw_path,
            headers,
            body,
            length,
            request.headers.get("host", "").encode("ascii") or None,
        )
        try:
            response = await self._sender.send(upstream_request)
        except UpstreamError as error:
            raise _to_httpx(error, request) from error
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_Stream(response),
            request=request,
        )


class _Stream(httpx.AsyncByteStream):
    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._response.first:
            yield self._response.first
        try:
            async for chunk in self._response.body:
                yield chunk
        except UpstreamError as error:
            raise httpx.RemoteProtocolError(str(error)) from error

    async def aclose(self) -> None:
        await self._response.aclose()


def _to_httpx(error: UpstreamError, request: httpx.Request) -> httpx.HTTPError:
    if isinstance(error, PoolExhausted):
        return httpx.PoolTimeout(str(error), request=request)
    if isinstance(error, UpstreamTimeout):
        kinds = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout}
        return kinds.get(error.phase, httpx.ReadTimeout)(str(error), request=request)
    if isinstance(error, UpstreamConnectError):
        return httpx.ConnectError(str(error), request=request)
    return httpx.RemoteProtocolError(str(error), request=request)
