"""How a request reaches an upstream: pools, balancing, health, breaking, retries.

The seam the gateway sees is :class:`upstreams.upstream.Upstream.send`: it takes an
:class:`UpstreamRequest` and returns an :class:`UpstreamResponse` (status, headers, body
stream). Pools, balancers and transports stay behind it.
"""

from __future__ import annotations

from upstreams.errors import (
    PoolExhausted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.spec import TargetSpec, UpstreamSpec
from upstreams.upstream import Upstream

__all__ = [
    "PoolExhausted",
    "TargetSpec",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamSpec",
    "UpstreamTimeout",
]
