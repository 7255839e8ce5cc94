"""Typed settings of one upstream, built by ``gateway.config`` from the config file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One server of an upstream: scheme, host and port come from config, never from clients."""

    scheme: str
    host: str
    port: int
    weight: int = 1

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """Settings of one upstream; names and defaults follow Envoy's cluster options."""

    name: str
    targets: tuple[TargetSpec, ...]
    max_connections: int = 512
    keepalive_expiry: float = 30.0
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    pool_timeout: float = 5.0
    http2: bool = False
    balancer: str = "round_robin"
