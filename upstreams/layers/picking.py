"""Which target a try goes to: the upstream's balancer, and the key it hashes on.

When no target is up, the request is refused at once with 503; ``Retry-After`` says when
the first ejected target is probed again.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from upstreams.balancer import Balancer, hash_bytes
from upstreams.breaker import OPEN
from upstreams.errors import NoHealthyTarget
from upstreams.messages import UpstreamRequest
from upstreams.spec import UpstreamSpec
from upstreams.target import Target


class Picker:
    __slots__ = ("_balancer", "_hash_header", "_hashing", "_health_interval", "_name", "targets")

    def __init__(self, spec: UpstreamSpec, targets: Sequence[Target], balancer: Balancer) -> None:
        self._name = spec.name
        self.targets = targets
        self._balancer = balancer
        self._hashing = spec.balancer == "hash"
        self._hash_header = (
            spec.hash_on.partition(":")[2].strip().lower().encode("latin-1")
            if spec.hash_on.startswith("header:")
            else b""
        )
        self._health_interval = spec.health.interval if spec.health is not None else None

    def key(self, request: UpstreamRequest) -> int:
        """What the hash balancer hashes (the header, else the client address); 0 otherwise."""
        if not self._hashing:
            return 0
        name = self._hash_header
        if name:
            for header, value in request.headers:
                if header == name:
                    return hash_bytes(value)
        return hash_bytes(request.client.encode("latin-1"))

    def pick(self, key: int, avoid: Sequence[Target]) -> Target:
        """A target that is up, another than ``avoid`` if one is; raises NoHealthyTarget."""
        target = self._balancer.pick(key, avoid)
        if target is None:
            raise self._no_target()
        return target

    def _no_target(self) -> NoHealthyTarget:
        error = NoHealthyTarget(f"every target of {self._name!r} is drained or unhealthy")
        error.retry_after = self.retry_after()
        return error

    def retry_after(self) -> float:
        """Seconds, at least 1, until the first ejected target is probed again (the 503's
        ``Retry-After``); the health-check interval when only health checks hold them down."""
        now = asyncio.get_running_loop().time()
        waits = [
            t.breaker.reopens_at - now
            for t in self.targets
            if t.breaker is not None and t.breaker.state == OPEN
        ]
        if not waits and self._health_interval is not None:
            waits = [self._health_interval]
        return max(1.0, math.ceil(min(waits, default=1.0)))
