"""One named upstream: its targets, their pools, and the stack of senders a request takes."""

from __future__ import annotations

import asyncio

import httpx

from upstreams.balancer import make_balancer
from upstreams.h2 import H2Sender
from upstreams.health import HealthChecker
from upstreams.layers.counts import Capping, Counting
from upstreams.layers.limiting import Lateness, Limiting
from upstreams.layers.per_try import BasePath, Breaking, TryTimeout
from upstreams.layers.picking import Picker
from upstreams.layers.retrying import Retrying
from upstreams.messages import UpstreamRequest
from upstreams.pool import ConnectionPool
from upstreams.sender import Sender, Sending, stack
from upstreams.spec import UpstreamSpec
from upstreams.target import Target


class Upstream:
    """The seam the gateway uses: ``await upstream.send(request)``.

    Behind it, a stack of senders composed once, here (``upstreams/layers/``): the balancer
    picks a target that is up (healthy, not drained, breaker closed), the request goes to
    that target's sender, and failures are retried on another target as the route's
    :class:`~upstreams.retry.RetryPolicy` allows, all before the response head is returned,
    so nothing of a failed try ever reaches the client. The response (or the raised
    :class:`~upstreams.errors.UpstreamError`) says which target answered and how many
    retries it took.
    """

    def __init__(self, spec: UpstreamSpec, lateness: Lateness | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.senders: list[Sender] = [
            H2Sender(t, spec) if spec.http2 else ConnectionPool(t, spec) for t in spec.targets
        ]
        self.targets = [Target(s, spec.name, spec.breaker) for s in self.senders]
        self._balancer = make_balancer(spec.balancer, self.targets)
        # The composition, top to bottom. Per request: the adaptive limit admits, queues or
        # refuses first (a queued request holds no slot below); the in-flight cap holds its slot
        # through every retry and until the body ends, so it is above the retries; each
        # try picks a target (a retry another one) and goes down that target's stack. Per
        # try: the breaker and the outstanding count see every try, retries included; the
        # per-try timeout is below them, so a try that ran out of time is the target's
        # failure. What an upstream has not configured is left out.
        counting = spec.balancer == "least_outstanding"
        for target in self.targets:
            target.tries = stack(
                Breaking(target.breaker) if target.breaker is not None else None,
                Counting(target) if counting else None,
                TryTimeout(target.url),
                BasePath(target.spec.path) if target.spec.path else None,
                bottom=target.sender,
            )
        adaptive = spec.adaptive_concurrency
        #: The adaptive concurrency limiter, shared by the targets; None: not configured.
        self.limiter = Limiting(spec.name, adaptive, lateness) if adaptive is not None else None
        self._sender = stack(
            self.limiter,
            Capping(spec.name, spec.max_requests) if spec.max_requests > 0 else None,
            bottom=Retrying(spec.name, Picker(spec, self.targets, self._balancer)),
        )
        self.health = HealthChecker(spec.health, self.targets) if spec.health else None
        self._client: httpx.AsyncClient | None = None
        #: Target URLs an operator drained: they get no new requests; in-flight ones finish.
        self.drained: frozenset[str] = frozenset()

    def send(self, request: UpstreamRequest) -> Sending:
        """The response head (the body streams on), or an :class:`UpstreamError` raised."""
        return self._sender.send(request)

    # ---- operations ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the active health checks, if any (in the serving event loop)."""
        if self.health is not None:
            self.health.start()

    def set_drained(self, targets: frozenset[str]) -> None:
        """Take targets out of (or back into) the rotation; in-flight requests finish.

        With every target drained, requests fail fast with 503.
        """
        if targets == self.drained:
            return
        self.drained = targets
        for target in self.targets:
            target.drained = target.url in targets
            target.refresh()

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
        if self.health is not None:
            await self.health.aclose()
        for target in self.targets:
            if target.breaker is not None:
                target.breaker.close()
        if self._client is not None:
            await self._client.aclose()
        for sender in self.senders:
            await sender.aclose()

    async def retire(self, max_wait: float = 300.0) -> None:
        """Close this upstream once the requests still using it are done (after a reload).

        Health checks stop at once; idle pooled connections close at once, busy ones as
        their responses end. HTTP/2 senders, whose streams are not counted, get
        ``read_timeout`` to finish. Then everything is closed.
        """
        try:
            if self.health is not None:
                await self.health.aclose()
            loop = asyncio.get_running_loop()
            until = loop.time() + max_wait
            pools = [s for s in self.senders if isinstance(s, ConnectionPool)]
            for pool in pools:
                pool.retire()
            if len(pools) < len(self.senders):
                until = min(until, loop.time() + self.spec.read_timeout)
            while loop.time() < until and (
                len(pools) < len(self.senders) or any(p.stats().in_use for p in pools)
            ):
                await asyncio.sleep(0.1)
        finally:
            await self.aclose()
