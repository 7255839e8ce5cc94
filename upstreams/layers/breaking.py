"""A target's circuit breaker, fed by every try sent to it (retries included).

Outcomes, as :mod:`upstreams.breaker` counts them: a failure to get a response head
(except a full pool, which says nothing about the target), a 502/503/504, or a success.
A try that ends with no outcome (the client went away) only gives back its half-open
probe slot. The breaker's ``admits`` is read by the balancer, above this layer.
"""

from __future__ import annotations

import asyncio

from upstreams.breaker import FAILURE_STATUSES, Breaker
from upstreams.errors import PoolExhausted, UpstreamError
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sends


class Breaking:
    __slots__ = ("_breaker", "inner")

    inner: Sends

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        breaker = self._breaker
        breaker.dispatch()
        try:
            response = await self.inner.send(request)
        except UpstreamError as error:
            if not isinstance(error, PoolExhausted):
                breaker.failure(asyncio.get_running_loop().time(), str(error))
            raise
        except BaseException:
            breaker.abandon()
            raise
        status = response.status
        if status in FAILURE_STATUSES:
            breaker.failure(asyncio.get_running_loop().time(), f"status {status}")
        else:
            breaker.success(asyncio.get_running_loop().time())
        return response
