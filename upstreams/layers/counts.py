"""The layers that hold a count until a response's body has ended.

- :class:`Capping`: the upstream's ``max_requests`` cap, per request. A request keeps its
  slot through its retries and back-offs and until its body has ended, so the cap bounds
  what the upstream is really serving; beyond it a request is refused at once (503).
- :class:`Counting`: requests outstanding at one target, per try, for the
  least-outstanding balancer. A try counts from the moment it is sent until its response
  body has ended, or until it failed; a try answered with a status that is then retried
  ends when retrying closes it.

Both give their count back through :func:`release_on_close`: at once when the response
came whole, else when it is closed, since that is when the target is done with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from upstreams.errors import UpstreamOverloaded
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sends
from upstreams.target import Target


class Holder(Protocol):
    def release(self) -> None: ...


def release_on_close(response: UpstreamResponse, holder: Holder) -> None:
    """Call ``holder.release()`` once, when ``response`` is closed (now if it is complete)."""
    if response.complete:
        holder.release()
    else:
        response.aclose = _Release(response.aclose, holder)


class _Release:
    """``response.aclose`` that releases first: one small object, no closure."""

    __slots__ = ("_aclose", "_done", "_holder")

    def __init__(self, aclose: Callable[[], Awaitable[None]], holder: Holder) -> None:
        self._aclose = aclose
        self._holder = holder
        self._done = False

    async def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._holder.release()
        await self._aclose()


# ---- Counting: requests outstanding at one target, per try ---------------------------------


class Counting:
    __slots__ = ("_target", "inner")

    inner: Sends

    def __init__(self, target: Target) -> None:
        self._target = target

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        target = self._target
        target.outstanding += 1
        try:
            response = await self.inner.send(request)
        except BaseException:
            target.outstanding -= 1
            raise
        release_on_close(response, self)
        return response

    def release(self) -> None:
        self._target.outstanding -= 1


# ---- Capping: the upstream's max_requests cap, per request ---------------------------------


class Capping:
    __slots__ = ("_max", "_name", "in_flight", "inner")

    inner: Sends

    def __init__(self, name: str, max_requests: int) -> None:
        self._name = name
        self._max = max_requests
        #: Requests of this upstream whose response has not ended yet.
        self.in_flight = 0

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        if self.in_flight >= self._max:
            policy = request.policy
            if policy is not None and policy.budget is not None:
                # A refused request still counts as a request of its route's retry budget,
                # as every request does (the budget's ratio is of requests, not of tries).
                policy.budget.request(asyncio.get_running_loop().time())
            raise UpstreamOverloaded(
                f"upstream {self._name!r} has {self.in_flight} requests in flight "
                f"(max_requests = {self._max})"
            )
        self.in_flight += 1
        try:
            response = await self.inner.send(request)
        except BaseException:
            self.in_flight -= 1
            raise
        release_on_close(response, self)
        return response

    def release(self) -> None:
        self.in_flight -= 1
