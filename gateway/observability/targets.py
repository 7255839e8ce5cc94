"""One read-only view of every target, for /readyz, /admin/upstreams and the gauges.

The upstream layer owns health checks, breakers and drains; this module only reads them,
through attributes a target may or may not have (``healthy``, ``drained``,
``breaker_state``, ``health_checks_passed``/``_failed``, ``stats()``). A target without
health checks counts as healthy. It is the one place that knows those names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.ops.control import Control
    from gateway.state import GatewayState
    from upstreams.layers.limiting import LimiterStats
    from upstreams.sender import PoolStats
    from upstreams.upstream import Upstream


@dataclass(frozen=True, slots=True)
class TargetView:
    upstream: str
    url: str
    weight: int
    healthy: bool
    drained: bool
    breaker_state: str | None
    pool: PoolStats | None
    health_checks_passed: int | None
    health_checks_failed: int | None

    @property
    def usable(self) -> bool:
        return self.healthy and not self.drained


def runtime_targets(upstream: Upstream) -> list[Any]:
    """The upstream's per-target objects: run-time targets when it has them, else senders."""
    targets = getattr(upstream, "targets", None)
    return list(targets) if targets else list(upstream.senders)


def target_views(state: GatewayState, control: Control) -> Iterator[TargetView]:
    for name, upstream in state.upstreams.items():
        for item in runtime_targets(upstream):
            spec = item.target
            url = spec.url
            passed = getattr(item, "health_checks_passed", None)
            failed = getattr(item, "health_checks_failed", None)
            breaker = getattr(item, "breaker_state", None)
            yield TargetView(
                name,
                url,
                spec.weight,
                bool(getattr(item, "healthy", True)),
                control.is_drained(name, url) or bool(getattr(item, "drained", False)),
                breaker if isinstance(breaker, str) else None,
                item.stats(),
                passed if isinstance(passed, int) else None,
                failed if isinstance(failed, int) else None,
            )


def limiters(state: GatewayState) -> Iterator[tuple[str, LimiterStats]]:
    """Each upstream with adaptive concurrency, and its limiter's figures in this worker."""
    for name, upstream in state.upstreams.items():
        limiter = getattr(upstream, "limiter", None)
        if limiter is not None:
            yield name, limiter.stats()


def apply_drained(upstream: Upstream, urls: frozenset[str]) -> None:
    """Tell the upstream which of its targets an operator drained."""
    setter = getattr(upstream, "set_drained", None)
    if setter is not None:
        setter(urls)
        return
    for item in runtime_targets(upstream):
        drained = item.target.url in urls
        if getattr(item, "drained", None) is not None and item.drained != drained:
            item.drained = drained
            refresh = getattr(item, "refresh", None)
            if refresh is not None:
                refresh()


def apply_control(state: GatewayState, control: Control) -> None:
    """Apply the operator's target drains to a snapshot (each sync, and a reloaded one)."""
    for name, upstream in state.upstreams.items():
        apply_drained(upstream, control.drained_targets(name))


def matches(view: TargetView, name: str) -> bool:
    """How an operator may name a target in an admin path: host:port or the full URL."""
    authority = view.url.partition("://")[2]
    if name in (authority, view.url):
        return True
    default = "443" if view.url.startswith("https:") else "80"
    return ":" not in authority.rpartition("]")[2] and name == f"{authority}:{default}"
