"""The upstream's ``max_requests`` cap: beyond it, a request is refused at once (503).

Per request, not per try: a request keeps its slot through its retries and back-offs, and
until its response body has ended, so the cap bounds what the upstream is really serving.
"""

from __future__ import annotations

import asyncio

from upstreams.errors import UpstreamOverloaded
from upstreams.layers.release import release_on_close
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sends


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
