"""The layers each try to one target passes through, over the target's own sender.

- :class:`Breaking`: the target's circuit breaker, fed by every try sent to it (retries
  included). Outcomes, as :mod:`upstreams.breaker` counts them: a failure to get a response
  head (except a full pool, which says nothing about the target), a 502/503/504, or a
  success. A try that ends with no outcome (the client went away) only gives back its
  half-open probe slot. The breaker's ``admits`` is read by the balancer, above this layer.
- :class:`TryTimeout`: the route's ``per_try_timeout``, how long one try may take to its
  response head. It sits below the breaker and the count, so a try that ran out of time is
  a failure of its target (a read timeout), not a try abandoned. Routes are not known when
  an upstream is built, so every target has this layer; for a request whose route sets no
  per-try timeout it hands back the next coroutine without a frame of its own.
- :class:`BasePath`: the path of the target's URL, before the request's (Kong's service
  path); only on targets whose URL has one. Per try, since a retry may go to a target with
  another path; the request itself is never changed.
"""

from __future__ import annotations

import asyncio
import dataclasses

from upstreams.breaker import FAILURE_STATUSES, Breaker
from upstreams.errors import PoolExhausted, UpstreamError, UpstreamTimeout
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sending, Sends


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


# ---- TryTimeout: the route's per_try_timeout -----------------------------------------------


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


# ---- BasePath: the target URL's path -------------------------------------------------------


class BasePath:
    __slots__ = ("_path", "inner")

    inner: Sends

    def __init__(self, path: str) -> None:
        self._path = path.encode("ascii")  # validated as URL path characters

    def send(self, request: UpstreamRequest) -> Sending:
        if request.target.startswith(b"/"):  # not an asterisk-form OPTIONS *
            request = dataclasses.replace(request, target=self._path + request.target)
        return self.inner.send(request)
