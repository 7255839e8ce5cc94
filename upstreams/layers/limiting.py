"""Adaptive concurrency: admit what the upstream can serve, queue briefly, refuse the rest.

The layer above every other of an upstream's stack when ``[upstreams.NAME.adaptive_concurrency]``
is set (``upstream.py``). A request takes a place among the requests in flight, holds it
through its retries and until its response body has ended (as ``Capping`` does), and its
first try's time to a response head is a sample for the limit
(:class:`upstreams.concurrency.Gradient`). Over the limit it waits in a FIFO queue of at
most ``max_queue`` for at most ``queue_timeout``, then is refused with
:class:`~upstreams.errors.UpstreamOverloaded` (503 ``upstream_overloaded``, ``Retry-After``):
in milliseconds, never after the pool's ``pool_timeout``. A retry is part of its request
and never takes a second place, so it can never bypass the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from upstreams.concurrency import AdaptiveConcurrencySpec, Gradient
from upstreams.errors import UpstreamOverloaded, UpstreamTimeout
from upstreams.layers.counts import release_on_close
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.retry import RetryPolicy
from upstreams.sender import Sends

log = logging.getLogger("quartgate.upstreams")

#: Refusals are logged once per this many seconds per upstream, with their count.
LOG_EVERY = 10.0


class Lateness(Protocol):
    """How late the worker's event loop runs, in seconds (gateway/ops/loop_lag.py)."""

    @property
    def lag(self) -> float: ...


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """What ``/metrics`` and the admin API show of a limiter."""

    limit: int
    in_flight: int
    queued: int
    refused: int
    min_rtt: float
    probing: bool


class Limiting:
    __slots__ = (
        "_gradient",
        "_lateness",
        "_logged_at",
        "_loop",
        "_name",
        "_unlogged",
        "_waiters",
        "in_flight",
        "inner",
        "refused",
        "spec",
    )

    inner: Sends

    def __init__(
        self, name: str, spec: AdaptiveConcurrencySpec, lateness: Lateness | None = None
    ) -> None:
        self._name = name
        self.spec = spec
        #: The worker's loop lateness, which no sample is blamed on the upstream for.
        self._lateness = lateness
        self._gradient: Gradient | None = None  # made in the serving loop, on first use
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: Requests holding a place: sent, or with a response body still streaming.
        self.in_flight = 0
        #: Requests refused since start (the metric is a counter over this).
        self.refused = 0
        self._logged_at = -LOG_EVERY
        self._unlogged = 0

    @property
    def full(self) -> bool:
        """A request now would be refused at once: the limit reached and the queue full.

        Read before a request is built (gateway/pipeline/upstream_dispatch.py), so that such
        a refusal costs neither a copy of its headers nor a read of its body."""
        waiters = len(self._waiters)
        if waiters < self.spec.max_queue:
            return False
        gradient = self._gradient
        limit = gradient.admit_limit if gradient is not None else self.spec.initial_limit
        return waiters > 0 or self.in_flight >= limit

    def refusal(self, policy: RetryPolicy | None) -> UpstreamOverloaded:
        """The refusal of a request that :attr:`full` turned away, counted and logged."""
        return self._refusal(policy, "the queue is full")

    def stats(self) -> LimiterStats:
        gradient = self._gradient
        return LimiterStats(
            gradient.admit_limit if gradient else self.spec.initial_limit,
            self.in_flight,
            len(self._waiters),
            self.refused,
            gradient.min_rtt if gradient else 0.0,
            gradient.probing if gradient else False,
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        gradient = self._gradient
        if gradient is None:
            self._loop = loop = asyncio.get_running_loop()
            gradient = self._gradient = Gradient(self.spec, loop.time())
        else:
            loop = self._loop  # type: ignore[assignment]
        if self._waiters or self.in_flight >= gradient.admit_limit:
            await self._wait(request)  # a place handed over, or UpstreamOverloaded
        else:
            self.in_flight += 1
        started_with = self.in_flight
        gradient.started(started_with)
        began = loop.time()
        try:
            response = await self.inner.send(request)
        except UpstreamTimeout:
            gradient.timed_out()
            self._release()
            raise
        except BaseException:
            self._release()  # cancelled, refused below, unreachable: not a sample
            raise
        if response.retries == 0:
            now = loop.time()
            lateness = self._lateness
            late = lateness.lag if lateness is not None else 0.0
            gradient.sample(now - began, started_with, now, late)
            if self._waiters:
                self._wake()  # the window may have raised the limit
        release_on_close(response, self)
        return response

    def release(self) -> None:
        """The response ended: its place goes to the oldest waiter, if any."""
        self._release()

    # ---- the queue ---------------------------------------------------------------------

    async def _wait(self, request: UpstreamRequest) -> None:
        """Wait in line for a place; the waker counts it in ``in_flight`` for us."""
        if len(self._waiters) >= self.spec.max_queue:
            raise self._refusal(request.policy, "the queue is full")
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.spec.queue_timeout):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a place just as the wait ended: give it back
            else:
                waiter.cancel()
                self._discard(waiter)
            if isinstance(error, TimeoutError):
                wait = self.spec.queue_timeout
                raise self._refusal(
                    request.policy, f"no place within queue_timeout {wait:g}s"
                ) from None
            raise

    def _release(self) -> None:
        self.in_flight -= 1
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        """Hand free places to waiters, oldest first, counting each as in flight."""
        gradient = self._gradient
        waiters = self._waiters
        if gradient is None:
            return
        limit = gradient.admit_limit
        while waiters and self.in_flight < limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # already taken off by _wake
            self._waiters.remove(waiter)

    def _refusal(self, policy: RetryPolicy | None, why: str) -> UpstreamOverloaded:
        self.refused += 1
        if policy is not None and policy.budget is not None:
            # As with max_requests: a refused request still counts in its route's budget.
            policy.budget.request(self._loop.time() if self._loop else 0.0)
        gradient = self._gradient
        limit = gradient.admit_limit if gradient is not None else self.spec.initial_limit
        loop = self._loop
        now = loop.time() if loop is not None else 0.0
        self._unlogged += 1
        if now - self._logged_at >= LOG_EVERY:
            log.warning(
                "upstream %r: over its adaptive concurrency limit of %d (%s); "
                "%d request(s) refused since the last such line",
                self._name,
                limit,
                why,
                self._unlogged,
            )
            self._logged_at = now
            self._unlogged = 0
        refusal = UpstreamOverloaded(
            f"upstream {self._name!r} is over its adaptive concurrency limit of {limit} ({why})"
        )
        refusal.summarised = True  # by the line above, once per LOG_EVERY
        return refusal
