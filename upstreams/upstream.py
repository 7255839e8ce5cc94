"""One named upstream: its targets, their pools, and the balancer that picks among them."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace

import httpx

from upstreams.balancer import hash_bytes, make_balancer
from upstreams.breaker import FAILURE_STATUSES, OPEN
from upstreams.errors import (
    NoHealthyTarget,
    PoolExhausted,
    RouteTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from upstreams.h2 import H2Sender
from upstreams.health import HealthChecker
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.pool import ConnectionPool
from upstreams.retry import CONNECT_ONLY, RetryPolicy, backoff, condition
from upstreams.sender import Sender
from upstreams.spec import UpstreamSpec
from upstreams.target import Target

log = logging.getLogger("quartgate.upstreams")


class Upstream:
    """The seam the gateway uses: ``await upstream.send(request)``.

    Behind it: the balancer picks a target that is up (healthy, not drained, breaker
    closed), the request goes to that target's sender, and failures are retried on another
    target as the route's :class:`RetryPolicy` allows, all before the response head is
    returned, so nothing of a failed try ever reaches the client.
    """

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.senders: list[Sender] = [
            H2Sender(t, spec) if spec.http2 else ConnectionPool(t, spec) for t in spec.targets
        ]
        self.targets = [Target(s, spec.name, spec.breaker) for s in self.senders]
        self._balancer = make_balancer(spec.balancer, self.targets)
        self._hash_header = (
            spec.hash_on.partition(":")[2].strip().lower().encode("latin-1")
            if spec.hash_on.startswith("header:")
            else b""
        )
        self._hashing = spec.balancer == "hash"
        self._max_requests = spec.max_requests
        #: Count requests in flight (per upstream and per target) only when something reads it.
        self._counting = spec.max_requests > 0 or spec.balancer == "least_outstanding"
        self.in_flight = 0
        self.health = HealthChecker(spec.health, self.targets) if spec.health else None
        #: No breaker, no counting, no hashing: requests without a route policy go straight.
        self._plain = not self._counting and not self._hashing and spec.breaker is None
        #: Without a route retry policy: a failed connect is tried once on another target.
        self._implicit = RetryPolicy(
            CONNECT_ONLY if len(self.targets) > 1 else replace(CONNECT_ONLY, attempts=1)
        )
        self._client: httpx.AsyncClient | None = None
        #: Target URLs an operator drained: they get no new requests; in-flight ones finish.
        self.drained: frozenset[str] = frozenset()

    # ---- sending -------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        policy = request.policy
        if policy is None and self._plain:
            # Nothing configured: one pick and one send, as before any of this existed.
            target = self._balancer.pick(0, ())
            if target is not None:
                try:
                    return await target.sender.send(request)
                except (UpstreamConnectError, UpstreamTimeout) as error:
                    if (
                        len(self.targets) == 1
                        or condition(error) != "connect_error"
                        or not isinstance(request.body, bytes)
                    ):
                        raise
                    # The implicit policy: the next target, once.
                    await self._before_retry(self._implicit, 1, 0.0, "connect_error", target)
                    return await self._send(request, None, 0.0, [target])
        if policy is None or not policy.timeout:
            return await self._send(request, policy, 0.0)
        deadline = asyncio.get_running_loop().time() + policy.timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await self._send(request, policy, deadline)
        except TimeoutError:
            raise RouteTimeout(
                f"upstream {self.name!r}: no response within the route timeout "
                f"of {policy.timeout:g}s"
            ) from None

    async def _send(
        self,
        request: UpstreamRequest,
        policy: RetryPolicy | None,
        deadline: float,
        tried: list[Target] | None = None,
    ) -> UpstreamResponse:
        retry = policy if policy is not None and policy.spec is not None else self._implicit
        spec = retry.spec
        assert spec is not None
        loop = asyncio.get_running_loop()
        budget = retry.budget
        if budget is not None:
            budget.request(loop.time())
        counting = self._counting
        if counting:
            if self._max_requests and self.in_flight >= self._max_requests:
                raise UpstreamOverloaded(
                    f"upstream {self.name!r} has {self.in_flight} requests in flight "
                    f"(max_requests = {self._max_requests})"
                )
            self.in_flight += 1
        key = self._hash_key(request) if self._hashing else 0
        replayable = isinstance(request.body, bytes)
        if tried is None:
            tried = []
        attempt = len(tried) + 1
        try:
            while True:
                target = self._balancer.pick(key, tried)
                if target is None:
                    raise self._no_target(loop.time())
                request.retries = attempt - 1
                breaker = target.breaker
                if breaker is not None:
                    breaker.dispatch()
                if counting:
                    target.outstanding += 1
                try:
                    if spec.per_try_timeout:
                        response = await self._try(target, request, spec.per_try_timeout)
                    else:
                        response = await target.sender.send(request)
                except UpstreamError as error:
                    if counting:
                        target.outstanding -= 1
                    if breaker is not None and not isinstance(error, PoolExhausted):
                        breaker.failure(loop.time(), str(error))
                    why = condition(error)
                    if not (
                        attempt < spec.attempts
                        and replayable
                        and why in retry.conditions
                        and (why == "connect_error" or request.method in retry.methods)
                    ) or not await self._before_retry(retry, attempt, deadline, why, target):
                        raise
                    tried.append(target)
                    attempt += 1
                    continue
                except BaseException:
                    if counting:
                        target.outstanding -= 1
                    if breaker is not None:
                        breaker.abandon()
                    raise
                status = response.status
                if breaker is not None:
                    if status in FAILURE_STATUSES:
                        breaker.failure(loop.time(), f"status {status}")
                    else:
                        breaker.success(loop.time())
                if (
                    status in retry.statuses
                    and attempt < spec.attempts
                    and replayable
                    and request.method in retry.methods
                    and await self._before_retry(
                        retry, attempt, deadline, f"status {status}", target, response
                    )
                ):
                    if counting:
                        target.outstanding -= 1
                    tried.append(target)
                    attempt += 1
                    continue
                if counting:
                    self._track(response, target)
                    counting = False  # the response now owns the in-flight count
                return response
        finally:
            if counting:
                self.in_flight -= 1

    async def _try(
        self, target: Target, request: UpstreamRequest, timeout: float
    ) -> UpstreamResponse:
        try:
            async with asyncio.timeout(timeout):
                return await target.sender.send(request)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{target.url} sent no response head within per_try_timeout {timeout:g}s",
                phase="read",
            ) from None

    async def _before_retry(
        self,
        retry: RetryPolicy,
        attempt: int,
        deadline: float,
        why: str,
        target: Target,
        response: UpstreamResponse | None = None,
    ) -> bool:
        """Whether to retry now (budget and deadline allow); sleeps the back-off if so."""
        spec = retry.spec
        assert spec is not None
        now = asyncio.get_running_loop().time()
        delay = backoff(spec, attempt)
        if deadline and now + delay >= deadline:
            return False
        if retry.budget is not None and not retry.budget.try_retry(now):
            log.info("upstream %r: retry budget spent; not retrying after %s", self.name, why)
            return False
        if response is not None:
            await response.aclose()  # an unread body: the connection is not reused
        log.info(
            "upstream %r: %s from %s; retry %d of %d",
            self.name,
            why,
            target.url,
            attempt,
            spec.attempts - 1,
        )
        if delay:
            await asyncio.sleep(delay)
        return True

    def _track(self, response: UpstreamResponse, target: Target) -> None:
        """Count the request in flight until its response body has ended."""
        if response.complete:
            self.in_flight -= 1
            target.outstanding -= 1
            return
        inner = response.aclose
        done = False

        async def aclose() -> None:
            nonlocal done
            if not done:
                done = True
                self.in_flight -= 1
                target.outstanding -= 1
            await inner()

        response.aclose = aclose

    def _hash_key(self, request: UpstreamRequest) -> int:
        name = self._hash_header
        if name:
            for header, value in request.headers:
                if header == name:
                    return hash_bytes(value)
        return hash_bytes(request.client.encode("latin-1"))

    def _no_target(self, now: float) -> NoHealthyTarget:
        """503 at once; Retry-After is when the first ejected target is probed again."""
        waits = [
            t.breaker.reopens_at - now
            for t in self.targets
            if t.breaker is not None and t.breaker.state == OPEN
        ]
        if not waits and self.health is not None:
            waits = [self.health.spec.interval]
        error = NoHealthyTarget(f"every target of {self.name!r} is drained or unhealthy")
        error.retry_after = max(1.0, math.ceil(min(waits, default=1.0)))
        return error

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
