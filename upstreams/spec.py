"""Typed settings of one upstream, built by ``gateway.config`` from the config file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from annotated_types import Ge, Gt

from upstreams.breaker import BreakerSpec
from upstreams.concurrency import AdaptiveConcurrencySpec
from upstreams.health import HealthSpec


def default_port(scheme: str) -> int:
    """The port a URL of ``scheme`` means when it names none."""
    return 443 if scheme == "https" else 80


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One server of an upstream: scheme, host and port come from config, never from clients."""

    scheme: str
    host: str
    port: int
    weight: Annotated[int, Gt(0)] = 1
    #: The URL's path, prepended to every request's (Kong's service path): ``/v2`` sends
    #: ``/users/7`` as ``/v2/users/7``. Without a trailing slash; "" for none.
    path: str = ""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default_port(self.scheme) else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The server: what metrics, logs, drains and pools know a target by."""
        return f"{self.scheme}://{self.authority}"

    @property
    def location(self) -> str:
        """The URL as configured: the server and the path requests are sent under."""
        return self.url + self.path


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """Settings of one upstream; names and defaults follow Envoy's cluster options."""

    name: str
    targets: tuple[TargetSpec, ...]
    max_connections: Annotated[int, Gt(0)] = 512
    #: Seconds an idle pooled connection is kept.
    keepalive_expiry: Annotated[float, Ge(0)] = 30.0
    #: Seconds, each.
    connect_timeout: Annotated[float, Gt(0)] = 2.0
    read_timeout: Annotated[float, Gt(0)] = 30.0
    write_timeout: Annotated[float, Gt(0)] = 30.0
    pool_timeout: Annotated[float, Gt(0)] = 5.0
    http2: bool = False
    #: Streams at once on one HTTP/2 connection (and at most what the server allows);
    #: beyond them another connection is opened, up to ``max_connections``.
    max_concurrent_streams: Annotated[int, Gt(0)] = 100
    #: round_robin, weighted, least_outstanding or hash (docs/resilience.md).
    balancer: str = "round_robin"
    #: What the hash balancer hashes: "client_ip" or "header:NAME" (client_ip if absent).
    hash_on: str = "client_ip"
    #: Requests in flight to this upstream beyond which it answers 503; 0: no cap.
    max_requests: Annotated[int, Ge(0)] = 0
    #: ``[upstreams.NAME.health]``: active health checks; None: none.
    health: HealthSpec | None = None
    #: ``[upstreams.NAME.breaker]``: passive health (circuit breaker); None: none.
    breaker: BreakerSpec | None = None
    #: ``[upstreams.NAME.adaptive_concurrency]``: a limit learned from latency; None: none.
    adaptive_concurrency: AdaptiveConcurrencySpec | None = None
