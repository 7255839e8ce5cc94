"""The route's ``per_try_timeout``: how long one try may take to its response head.

It sits below the breaker and the count, so a try that ran out of time is a failure of its
target (a read timeout), not a try abandoned. Routes are not known when an upstream is
built, so every target has this layer; for a request whose route sets no per-try timeout it
hands back the next coroutine without a frame of its own.
"""

from __future__ import annotations

import asyncio

from upstreams.errors import UpstreamTimeout
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sending, Sends


class TryTimeout:
    __slots__ = ("_url", "inner")

    inner: Sends

    def __init__(self, url: str) -> None:
        self._url = url

    def send(self, request: UpstreamRequest) -> Sending:
        policy = request.policy
        spec = policy.spec if policy is not None else None
        if spec is None or not spec.per_try_timeout:
            return self.inner.send(request)
        return self._within(request, spec.per_try_timeout)

    async def _within(self, request: UpstreamRequest, timeout: float) -> UpstreamResponse:
        try:
            async with asyncio.timeout(timeout):
                return await self.inner.send(request)
        except TimeoutError:
            error = UpstreamTimeout(
                f"{self._url} sent no response head within per_try_timeout {timeout:g}s",
                phase="read",
                public=f"no response head within per_try_timeout {timeout:g}s",
            )
            error.sent_to = self._url
            raise error from None
