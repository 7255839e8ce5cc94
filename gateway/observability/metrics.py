"""Prometheus metrics: per-request counters and histograms, sampled gauges, the exposition.

Per request the observer does one dict lookup (children cached by route, method and status)
and three or four increments; nothing else. Gauges that describe state rather than events
(pool connections, target health, breaker state) are sampled: at every scrape in the worker
that answers it, and once a second in every worker when several share the metrics directory.

Several Hypercorn workers: prometheus-client's multiprocess mode, chosen by
``PROMETHEUS_MULTIPROC_DIR`` being set before prometheus_client is first imported
(``quartgate serve`` does that for ``--workers`` > 1). Each worker then writes its values to
its own mmap files and a scrape of any worker sums them.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway.edge.context import RequestContext
from gateway.observability.sections import MetricsSettings
from gateway.observability.sessions import SessionMetrics
from routes.model import ALL_METHODS

if TYPE_CHECKING:
    from gateway.ops.control import Control
    from gateway.state import GatewayState
    from gateway.websocket.relay import Session

NO_ROUTE = "(none)"
OTHER_METHOD = "OTHER"
BREAKER_STATES = ("closed", "half_open", "open")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_mode() -> bool:
    """True when prometheus_client was imported with ``PROMETHEUS_MULTIPROC_DIR`` set."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class GatewayMetrics:
    """Every metric of one app. Registered on the app's own registry, never the global one."""

    def __init__(self, settings: MetricsSettings, version: str) -> None:
        self.multiprocess = multiprocess_mode()
        # In multiprocess mode values live in files; a scrape reads them all back through a
        # MultiProcessCollector, so the metric objects themselves are not registered.
        registry = None if self.multiprocess else CollectorRegistry()
        self._registry = registry
        buckets = settings.buckets
        self.requests = Counter(
            "quartgate_requests",
            "Requests answered, by route, method and status class.",
            ["route", "method", "status_class"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "quartgate_request_duration_seconds",
            "Whole request, from its head arriving to its last body byte sent.",
            ["route"],
            buckets=buckets,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "quartgate_upstream_duration_seconds",
            "Upstream part: from sending the request to the upstream's response head.",
            ["route", "upstream"],
            buckets=buckets,
            registry=registry,
        )
        self.gateway_duration = Histogram(
            "quartgate_gateway_duration_seconds",
            "Gateway part of a proxied request: its time to the response head, less the "
            "upstream's (all tries).",
            ["route"],
            buckets=buckets,
            registry=registry,
        )
        self.upstream_responses = Counter(
            "quartgate_upstream_responses",
            "Requests sent to an upstream, by upstream and the exact status the client got "
            "(Envoy's upstream_rq_<code>; a 502/503/504 of the gateway's own included).",
            ["upstream", "status"],
            registry=registry,
        )
        self.retries = Counter(
            "quartgate_upstream_retries",
            "Upstream requests retried.",
            ["route", "upstream"],
            registry=registry,
        )
        self.cache_requests = Counter(
            "quartgate_cache_requests",
            "Requests to routes with [routes.cache], by what the cache made of them: hit, "
            "miss, stale (revalidated, or served stale), coalesced (served another request's "
            "fetch), bypass (Range, no-store); docs/cache.md.",
            ["route", "result"],
            registry=registry,
        )
        self.grpc_responses = Counter(
            "quartgate_grpc_responses",
            "gRPC calls by route and the grpc-status the client got (the upstream's, or the "
            "gateway's own for a call it answered: docs/grpc.md).",
            ["route", "grpc_status"],
            registry=registry,
        )
        self.gateway_errors = Counter(
            "quartgate_gateway_errors",
            "Requests the gateway answered itself with an error, by error code.",
            ["route", "code"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "quartgate_ratelimit_rejections",
            "Requests refused with 429 by a rate-limit policy.",
            ["route"],
            registry=registry,
        )
        self.bytes_in = Counter(
            "quartgate_request_body_bytes",
            "Request body bytes received from clients.",
            ["route"],
            registry=registry,
        )
        self.bytes_out = Counter(
            "quartgate_response_body_bytes",
            "Response body bytes sent to clients.",
            ["route"],
            registry=registry,
        )
        self.connections = Gauge(
            "quartgate_upstream_connections",
            "Upstream pool connections by state (in_use, idle) and requests waiting for one.",
            ["upstream", "target", "state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.target_healthy = Gauge(
            "quartgate_upstream_target_healthy",
            "1 when the target passes its health checks (or has none), else 0.",
            ["upstream", "target"],
            registry=registry,
            multiprocess_mode="livemin",  # unhealthy if any worker sees it so
        )
        self.target_drained = Gauge(
            "quartgate_upstream_target_drained",
            "1 while an operator has drained the target (no new requests), else 0.",
            ["upstream", "target"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.breaker_state = Gauge(
            "quartgate_upstream_circuit_breaker_state",
            "1 for the circuit breaker's current state (closed, half_open, open).",
            ["upstream", "target", "state"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.health_checks = Counter(
            "quartgate_upstream_health_checks",
            "Active health check results.",
            ["upstream", "target", "result"],
            registry=registry,
        )
        # Adaptive concurrency (docs/overload.md): per worker, summed over workers.
        self.concurrency_limit = Gauge(
            "quartgate_upstream_concurrency_limit",
            "The adaptive concurrency limit: requests the upstream is admitted at once.",
            ["upstream"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.concurrency_in_flight = Gauge(
            "quartgate_upstream_concurrency_in_flight",
            "Requests holding a place under the adaptive concurrency limit.",
            ["upstream"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.concurrency_queued = Gauge(
            "quartgate_upstream_concurrency_queued",
            "Requests waiting for a place under the adaptive concurrency limit.",
            ["upstream"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.concurrency_refused = Counter(
            "quartgate_upstream_concurrency_refused",
            "Requests refused with 503 upstream_overloaded by the adaptive concurrency limit.",
            ["upstream"],
            registry=registry,
        )
        self.loop_lag = Gauge(
            "quartgate_event_loop_lag_seconds",
            "How late the worker's event loop last ran a timer (max_loop_lag sheds past it).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.ready = Gauge(
            "quartgate_ready",
            "1 when /readyz answers 200.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.build_info = Gauge(
            "quartgate_build_info",
            "Always 1; the labels say what is running.",
            ["version", "python", "implementation"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.config_info = Gauge(
            "quartgate_config_info",
            "1 for the config version in force (sha256 prefix of the file) and its source.",
            ["version", "source"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.config_reloads = Counter(
            "quartgate_config_reloads",
            "Config reloads attempted, by result.",
            ["result"],
            registry=registry,
        )
        self.config_reload_time = Gauge(
            "quartgate_config_last_reload_success_timestamp_seconds",
            "When the config in force was loaded (Unix time).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.access_log_dropped = Counter(
            "quartgate_access_log_dropped",
            "Access log lines dropped because the writer fell behind.",
            registry=registry,
        )
        #: WebSocket sessions (gateway/observability/sessions.py).
        self.sessions = SessionMetrics(registry)
        if registry is not None:
            ProcessCollector(registry=registry)
        from gateway.version import __version__

        self.build_info.labels(
            __version__, platform.python_version(), platform.python_implementation()
        ).set(1)
        self._config: tuple[str, str] | None = None
        #: The running totals already counted, by counter and labels (``_count_up``).
        self._seen: dict[tuple[object, ...], int] = {}

    # ---- state gauges -------------------------------------------------------------------

    def config_loaded(self, version: str, source: str, when: float) -> None:
        if self._config is not None and self._config != (version, source):
            self.config_info.labels(*self._config).set(0)
        self._config = (version, source)
        self.config_info.labels(version, source).set(1)
        self.config_reload_time.set(when)

    def sample(self, state: GatewayState, control: Control) -> None:
        """Set the gauges that describe the state of upstreams, targets and readiness."""
        from gateway.observability.targets import limiters, target_views

        for view in target_views(state, control):
            name, target = view.upstream, view.url
            stats = view.pool
            if stats is not None:
                self.connections.labels(name, target, "in_use").set(stats.in_use)
                self.connections.labels(name, target, "idle").set(stats.idle)
                self.connections.labels(name, target, "waiting").set(stats.waiting)
            self.target_healthy.labels(name, target).set(1 if view.healthy else 0)
            self.target_drained.labels(name, target).set(1 if view.drained else 0)
            if view.breaker_state is not None:
                for each in BREAKER_STATES:
                    value = 1 if each == view.breaker_state else 0
                    self.breaker_state.labels(name, target, each).set(value)
            for result, total in (
                ("passed", view.health_checks_passed),
                ("failed", view.health_checks_failed),
            ):
                if total is not None:
                    self._count_up(self.health_checks, (name, target, result), total)
        for name, limiter in limiters(state):
            self.concurrency_limit.labels(name).set(limiter.limit)
            self.concurrency_in_flight.labels(name).set(limiter.in_flight)
            self.concurrency_queued.labels(name).set(limiter.queued)
            self._count_up(self.concurrency_refused, (name,), limiter.refused)

    def _count_up(self, counter: Counter, labels: tuple[str, ...], total: int) -> None:
        """Bring ``counter`` up to a running ``total`` the upstream layer keeps itself."""
        key = (counter, *labels)
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            counter.labels(*labels).inc(delta)
        self._seen[key] = total

    def exposition(self) -> bytes:
        return generate_latest(_WithoutCreated(self._source()))

    def families(self) -> Iterable[Metric]:
        """Every metric family with its samples, as a scrape would read them (summed over
        the workers in multiprocess mode): what the dashboard's data is made of."""
        return self._source().collect()

    def _source(self) -> CollectorRegistry:
        registry = self._registry
        if registry is None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def close(self) -> None:
        """A worker going away: its live gauges stop counting (multiprocess mode)."""
        if self.multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class MetricsObserver:
    """The per-request part: counters and histograms, children cached by their labels."""

    __slots__ = (
        "_by_cache",
        "_by_error",
        "_by_grpc",
        "_by_request",
        "_by_route",
        "_by_upstream",
        "_metrics",
    )

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._by_request: dict[tuple[str, str, int], Any] = {}
        self._by_route: dict[tuple[str, str], _RouteChildren] = {}
        self._by_error: dict[tuple[str, str], Any] = {}
        self._by_grpc: dict[tuple[str, int], Any] = {}
        self._by_cache: dict[tuple[str, str], Any] = {}
        self._by_upstream: dict[tuple[str, int], Any] = {}

    def request_finished(self, ctx: RequestContext) -> None:
        duration = time.perf_counter() - ctx.start
        route = ctx.route
        name = route.name if route is not None else NO_ROUTE
        method = ctx.scope["method"]
        if method not in ALL_METHODS:
            method = OTHER_METHOD  # Hypercorn accepts any token: never a label per garbage
        status = ctx.status
        counter = self._by_request.get((name, method, status))
        if counter is None:
            counter = self._request_child(name, method, status)
        counter.inc()
        children = self._by_route.get((name, ctx.upstream))
        if children is None:
            children = self._route_children(name, ctx.upstream)
        children.duration.observe(duration)
        if ctx.upstream_start:
            children.upstream.observe(ctx.upstream_time)
            if ctx.gateway_time:  # a response head came (gateway/pipeline/server_timing.py)
                children.gateway.observe(ctx.gateway_time)
            answered = self._by_upstream.get((ctx.upstream, status))
            if answered is None:
                label = str(status) if 100 <= status < 600 else "other"
                answered = self._metrics.upstream_responses.labels(ctx.upstream, label)
                self._by_upstream[(ctx.upstream, status)] = answered
            answered.inc()
        if ctx.bytes_in:
            children.bytes_in.inc(ctx.bytes_in)
        if ctx.bytes_out:
            children.bytes_out.inc(ctx.bytes_out)
        if ctx.retries:
            children.retries.inc(ctx.retries)
        if ctx.error:
            errors = self._by_error.get((name, ctx.error))
            if errors is None:
                errors = self._by_error[(name, ctx.error)] = self._metrics.gateway_errors.labels(
                    name, ctx.error
                )
            errors.inc()
            if status == 429 or ctx.error == "rate_limited":  # a gRPC call's is an HTTP 200
                children.rate_limited.inc()
        if ctx.cache:
            looked_up = self._by_cache.get((name, ctx.cache))
            if looked_up is None:
                looked_up = self._metrics.cache_requests.labels(name, ctx.cache)
                self._by_cache[(name, ctx.cache)] = looked_up
            looked_up.inc()
        if ctx.grpc_status is not None:
            calls = self._by_grpc.get((name, ctx.grpc_status))
            if calls is None:
                calls = self._metrics.grpc_responses.labels(name, str(ctx.grpc_status))
                self._by_grpc[(name, ctx.grpc_status)] = calls
            calls.inc()

    def session_opened(self, session: Session) -> None:
        self._metrics.sessions.opened(session)

    def session_finished(self, session: Session) -> None:
        self._metrics.sessions.finished(session)

    def _request_child(self, name: str, method: str, status: int) -> Any:
        status_class = f"{status // 100}xx" if 100 <= status < 600 else "5xx"
        child = self._metrics.requests.labels(name, method, status_class)
        self._by_request[(name, method, status)] = child
        return child

    def _route_children(self, name: str, upstream: str) -> _RouteChildren:
        m = self._metrics
        children = _RouteChildren(
            m.request_duration.labels(name),
            m.upstream_duration.labels(name, upstream or NO_ROUTE),
            m.gateway_duration.labels(name),
            m.retries.labels(name, upstream or NO_ROUTE),
            m.rate_limited.labels(name),
            m.bytes_in.labels(name),
            m.bytes_out.labels(name),
        )
        self._by_route[(name, upstream)] = children
        return children


class _RouteChildren:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "duration",
        "gateway",
        "rate_limited",
        "retries",
        "upstream",
    )

    def __init__(self, *children: Any) -> None:
        (
            self.duration,
            self.upstream,
            self.gateway,
            self.retries,
            self.rate_limited,
            self.bytes_in,
            self.bytes_out,
        ) = children


class _WithoutCreated:
    """A registry's families minus the ``<name>_created`` sample of each counter and histogram.

    Those timestamps double the series of every counter and nobody queries them, and the
    multiprocess collector never sends them, so one worker and several would differ.
    prometheus-client's ``disable_created_metrics()`` is process-wide; this is one app's.
    """

    __slots__ = ("_registry",)

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            family.samples = [s for s in family.samples if s.name != created]
            yield family
