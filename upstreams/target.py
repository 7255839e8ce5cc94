"""One target at run time: its sender, and whether it may get requests now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from upstreams.breaker import CLOSED, Breaker, BreakerSpec

if TYPE_CHECKING:
    from upstreams.sender import PoolStats, Sender, Sends
    from upstreams.spec import TargetSpec


class Target:
    """A target as the balancer sees it.

    ``up`` is the one flag a pick reads: healthy (active checks), not drained (operator),
    and admitted by its breaker (passive health). It is recomputed only when one of those
    changes, so picking costs an attribute read.

    ``sender`` is the target's own sender (health checks probe through it); ``tries`` is
    the stack a request's tries go through (breaker, count, per-try timeout over
    ``sender``), composed by :class:`~upstreams.upstream.Upstream`.
    """

    __slots__ = (
        "breaker",
        "drained",
        "health_checks_failed",
        "health_checks_passed",
        "healthy",
        "name",
        "outstanding",
        "sender",
        "spec",
        "tries",
        "up",
        "url",
        "weight",
    )

    def __init__(self, sender: Sender, upstream: str, breaker: BreakerSpec | None) -> None:
        self.sender = sender
        self.tries: Sends = sender
        self.spec: TargetSpec = sender.target
        self.url = self.spec.url
        self.weight = self.spec.weight
        self.name = f"{upstream}/{self.url}"
        self.healthy = True
        self.drained = False
        self.up = True
        #: Requests sent to this target whose response has not ended yet (when counted).
        self.outstanding = 0
        self.health_checks_passed = 0
        self.health_checks_failed = 0
        self.breaker = Breaker(breaker, self.name, self.refresh) if breaker else None

    @property
    def target(self) -> TargetSpec:
        """The configured target (the same name a sender uses, for metrics)."""
        return self.spec

    @property
    def breaker_state(self) -> str:
        return self.breaker.state if self.breaker is not None else CLOSED

    def stats(self) -> PoolStats | None:
        return self.sender.stats()

    def refresh(self) -> None:
        breaker = self.breaker
        self.up = self.healthy and not self.drained and (breaker is None or breaker.admits)
