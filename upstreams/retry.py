"""Retries and deadlines: a per-route policy, built once, that :class:`Upstream` walks.

What may be retried: a request whose body is bytes (a streamed body is gone once sent),
whose method is idempotent (``methods``), after a failure listed in ``retry_on``, while the
route's deadline and retry budget allow. A connection that could not be opened is retried
for any method: the request never left the gateway (nginx's ``proxy_next_upstream error``
rule). Retries happen before the response head is handed to the proxy, so no byte of a
failed attempt ever reaches the client. Each retry goes to another target when one is up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Annotated

from annotated_types import Ge, Gt, Interval

from upstreams.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamTimeout,
)
from upstreams.window import SlidingCounts

IDEMPOTENT = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
#: Conditions ``retry_on`` may name, besides 5xx status codes given as strings ("503").
CONDITIONS = ("connect_error", "reset", "timeout")
DEFAULT_RETRY_ON = ("connect_error", "reset", "502", "503", "504")


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """``[routes.retry]``; the defaults are what an empty table gives."""

    #: Tries in all, the first included (1 = no retries).
    attempts: Annotated[int, Gt(0)] = 2
    #: Failures that are retried: connect_error, reset, timeout, and 5xx statuses.
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    #: Methods that are retried (connect errors are retried for every method).
    methods: tuple[str, ...] = IDEMPOTENT
    #: Back-off before retry n is a random time in [0, min(backoff_max, backoff_base * 2**(n-1))].
    backoff_base: Annotated[float, Ge(0)] = 0.025
    backoff_max: Annotated[float, Ge(0)] = 0.25
    #: Seconds each try may take to its response head; 0 leaves it to read_timeout.
    per_try_timeout: Annotated[float, Ge(0)] = 0.0
    #: Retries may add at most this fraction of the route's requests (over 10 s) ...
    budget: Annotated[float, Interval(ge=0, le=1)] = 0.2
    #: ... plus this many retries per second, so quiet routes can still retry.
    min_retries_per_second: Annotated[float, Ge(0)] = 10.0


#: Without a ``[routes.retry]`` table: only connect failures, once, on another target.
CONNECT_ONLY = RetrySpec(
    attempts=2,
    retry_on=("connect_error",),
    backoff_base=0.0,
    backoff_max=0.0,
    budget=0.0,
    min_retries_per_second=0.0,
)


class RetryBudget:
    """Finagle's and Linkerd's retry budget: retries <= ratio * requests + floor, over 10 s."""

    WINDOW = 10.0

    __slots__ = ("_counts", "_floor", "_ratio")

    def __init__(self, ratio: float, per_second: float) -> None:
        self._ratio = ratio
        self._floor = per_second * self.WINDOW
        self._counts = SlidingCounts(self.WINDOW)

    def request(self, now: float) -> None:
        self._counts.add(now, total=1)

    def try_retry(self, now: float) -> bool:
        counts = self._counts
        counts.advance(now)
        if counts.marked + 1 > self._ratio * counts.total + self._floor:
            return False
        counts.add(now, marked=1)
        return True


@dataclass(slots=True)
class RetryPolicy:
    """What a route asks of the upstream layer: a deadline and how to retry.

    Built once per route at startup and carried on :class:`UpstreamRequest`; the budget is
    shared by all requests of the route (in one worker).
    """

    spec: RetrySpec | None = None
    #: Total seconds for all tries up to the response head; 0 means none.
    timeout: float = 0.0
    statuses: frozenset[int] = field(init=False)
    conditions: frozenset[str] = field(init=False)
    methods: frozenset[bytes] = field(init=False)
    budget: RetryBudget | None = field(init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if spec is None:
            self.statuses = frozenset()
            self.conditions = frozenset()
            self.methods = frozenset()
            self.budget = None
            return
        self.statuses = frozenset(int(c) for c in spec.retry_on if c.isdigit())
        self.conditions = frozenset(c for c in spec.retry_on if not c.isdigit())
        self.methods = frozenset(m.encode("ascii") for m in spec.methods)
        self.budget = (
            RetryBudget(spec.budget, spec.min_retries_per_second)
            if spec.budget > 0 or spec.min_retries_per_second > 0
            else None
        )


def condition(error: UpstreamError) -> str:
    """The ``retry_on`` word for a failure.

    An invalid response is ``invalid_response``, which ``retry_on`` cannot name: the
    upstream received the request and answered, so it is never sent again.
    """
    if isinstance(error, UpstreamInvalidResponse):
        return "invalid_response"
    if isinstance(error, UpstreamConnectError):
        return "connect_error"
    if isinstance(error, UpstreamTimeout):
        return "connect_error" if error.phase == "connect" else "timeout"
    return "reset"


def backoff(spec: RetrySpec, retry: int) -> float:
    """Full-jitter exponential back-off before retry number ``retry`` (1-based)."""
    ceiling = min(spec.backoff_max, spec.backoff_base * 2 ** (retry - 1))
    return random.uniform(0, ceiling) if ceiling > 0 else 0.0
