"""HTTP/2 to a target through httpx's own transport (httpcore + h2).

HTTP/2 multiplexes requests over one connection, so httpcore's per-request pool scan,
which hurts HTTP/1.1 at high concurrency, stays small here. ``http://`` targets use
prior knowledge (h2c); ``https://`` targets negotiate h2 with ALPN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from upstreams.errors import (
    PoolExhausted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.spec import TargetSpec, UpstreamSpec


class H2Sender:
    """Sends requests to one target over HTTP/2 with a pooled httpx transport."""

    def __init__(self, target: TargetSpec, spec: UpstreamSpec) -> None:
        self.target = target
        self._spec = spec
        cleartext = target.scheme == "http"
        self._transport = httpx.AsyncHTTPTransport(
            http1=not cleartext,
            http2=True,
            limits=httpx.Limits(
                max_connections=spec.max_connections,
                max_keepalive_connections=spec.max_connections,
                keepalive_expiry=spec.keepalive_expiry,
            ),
        )
        self._timeout = httpx.Timeout(
            connect=spec.connect_timeout,
            read=spec.read_timeout,
            write=spec.write_timeout,
            pool=spec.pool_timeout,
        ).as_dict()
        self._host = target.authority.encode("ascii")

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        target = self.target
        raw_path = request.target
        url = httpx.URL(scheme=target.scheme, host=target.host, port=target.port, raw_path=raw_path)
        headers = [(b"host", request.host or self._host), *request.headers]
        if request.content_length is not None and (
            request.content_length or request.method in (b"POST", b"PUT", b"PATCH")
        ):
            headers.append((b"content-length", b"%d" % request.content_length))
        body = request.body
        stream = httpx.ByteStream(body) if isinstance(body, bytes) else _AsyncStream(body)
        httpx_request = httpx.Request(
            request.method.decode("ascii"),
            url,
            headers=headers,
            stream=stream,
            extensions={"timeout": self._timeout},
        )
        try:
            response = await self._transport.handle_async_request(httpx_request)
        except httpx.HTTPError as error:
            raise _translate(error, target, before_response=True) from None
        body_stream = _ResponseBody(response, target)
        return UpstreamResponse(
            response.status_code,
            [(name.lower(), value) for name, value in response.headers.raw],
            body_stream,
            body_stream.aclose,
            sent_to=target.url,
        )

    def stats(self) -> None:
        return None

    async def aclose(self) -> None:
        await self._transport.aclose()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            yield chunk


class _ResponseBody:
    def __init__(self, response: httpx.Response, target: TargetSpec) -> None:
        self._response = response
        self._target = target
        self._iter = response.aiter_raw()

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._iter.__anext__()
        except httpx.HTTPError as error:
            raise _translate(error, self._target, before_response=False) from None

    async def aclose(self) -> None:
        await self._response.aclose()


def _translate(
    error: httpx.HTTPError, target: TargetSpec, *, before_response: bool
) -> UpstreamError:
    result: UpstreamError
    if isinstance(error, httpx.PoolTimeout):
        result = PoolExhausted(
            f"no free connection to {target.url} within pool_timeout",
            public="no free connection within pool_timeout",
        )
    elif isinstance(error, httpx.ConnectTimeout):
        result = UpstreamTimeout(f"connect to {target.url} timed out", phase="connect")
    elif isinstance(error, httpx.TimeoutException):
        phase = "write" if isinstance(error, httpx.WriteTimeout) else "read"
        result = UpstreamTimeout(f"upstream {phase} timed out", phase=phase)
    elif isinstance(error, httpx.ConnectError):
        result = UpstreamConnectError(
            f"connect to {target.url} failed: {error}", public="connect failed"
        )
    else:
        # httpx's text may quote the peer's address: the client is told the kind of failure.
        result = UpstreamProtocolError(
            str(error) or type(error).__name__, public="connection reset or protocol error"
        )
    result.before_response = before_response
    result.sent_to = target.url
    return result
