"""One named upstream: its targets, their pools, and the balancer that picks among them."""

from __future__ import annotations

from typing import Protocol, cast

import httpx

from upstreams.balancer import Balancer, Single, make_balancer
from upstreams.errors import NoHealthyTarget
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
        #: Target URLs an operator drained: they get no new requests; in-flight ones finish.
        self.drained: frozenset[str] = frozenset()

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        return await self._balancer.pick().send(request)

    def set_drained(self, targets: frozenset[str]) -> None:
        """Take targets out of (or back into) the rotation.

        The balancer is rebuilt once here, so picking a target per request costs the same
        as before. With every target drained, requests fail fast with 503.
        """
        if targets == self.drained:
            return
        self.drained = targets
        live = [s for s in self.senders if s.target.url not in targets]
        if not live:
            self._balancer = Single(cast(Sender, _Unavailable(self.name)))
            return
        self._balancer = make_balancer(self.spec.balancer, live, [s.target.weight for s in live])

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


class _Unavailable:
    """Stands in for the targets when none may be used: fails at once, opens nothing."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise NoHealthyTarget(f"every target of {self._upstream!r} is drained or unhealthy")
