"""The narrow seam below :class:`~upstreams.upstream.Upstream`: something that sends to one
target (an HTTP/1.1 :class:`~upstreams.pool.ConnectionPool`, an HTTP/2
:class:`~upstreams.h2.H2Sender`) and what it can tell about its connections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.spec import TargetSpec


@dataclass(frozen=True, slots=True)
class PoolStats:
    in_use: int
    idle: int
    waiting: int


class Sender(Protocol):
    """Sends to one target."""

    target: TargetSpec

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    def stats(self) -> PoolStats | None: ...

    async def aclose(self) -> None: ...
