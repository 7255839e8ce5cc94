"""One named upstream: its targets, their pools, and the balancer that picks among them."""

from __future__ import annotations

from typing import Protocol

import httpx

from upstreams.balancer import Balancer, make_balancer
from upstreams.h2 import H2Sender
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.pool import ConnectionPool, PoolStats
from upstreams.settings import TargetSpec, UpstreamSpec


class Sender(Protocol):
    """Sends to one target; :class:`ConnectionPool` (HTTP/1.1) and :class:`H2Sender`."""

    target: TargetSpec

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    def stats(self) -> PoolStats | None: ...

    async def aclose(self) -> None: ...


class Upstream:
    """The seam the gateway uses: ``await upstream.send(request)``."""

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.senders: list[Sender] = [
            H2Sender(t, spec) if spec.http2 else ConnectionPool(t, spec) for t in spec.targets
        ]
        self._balancer: Balancer[Sender] = make_balancer(
            spec.balancer, self.senders, [t.weight for t in spec.targets]
        )
        self._client: httpx.AsyncClient | None = None

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        return await self._balancer.pick().send(request)

    @property
    def client(self) -> httpx.AsyncClient:
        """An httpx client whose requests go through this upstream's pools and balancer.

        Relative URLs resolve against the upstream; what picks the target is the balancer.
        """
        if self._client is None:
            from upstreams.transport import UpstreamTransport

            self._client = httpx.AsyncClient(
                transport=UpstreamTransport(self), base_url=f"http://{self.name}"
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        for sender in self.senders:
            await sender.aclose()
