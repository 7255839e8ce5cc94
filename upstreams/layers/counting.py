"""Requests outstanding at one target, per try, for the least-outstanding balancer.

A try counts from the moment it is sent until its response body has ended, or until it
failed; a try answered with a status that is then retried ends when retrying closes it.
"""

from __future__ import annotations

from upstreams.layers.release import release_on_close
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.sender import Sends
from upstreams.target import Target


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
