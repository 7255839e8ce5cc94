"""What observability adds to one app: its observers, admin listener, lifecycle and reload.

``create_app`` builds one :class:`Observability` from the config; it decides which observers
go into the state (none when nothing is configured, so the hot path does no work), wraps
the proxy with the admin dispatcher when ``[admin]`` is set, and starts and stops the
access-log writer and the once-a-second sync task with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from gateway.asgi_types import ASGIApp
from gateway.config import ConfigError, GatewayConfig
from gateway.edge.context import Observer
from gateway.observability.targets import apply_drained, target_views
from gateway.ops.control import Control

if TYPE_CHECKING:
    from quart import Quart

    from gateway.observability.access_log import AccessLog
    from gateway.observability.metrics import GatewayMetrics
    from gateway.proxy import Proxy
    from gateway.state import GatewayState

log = logging.getLogger("quartgate")

#: How often each worker looks for decisions made in another worker, and samples gauges.
SYNC_INTERVAL = 1.0

Reloader = Callable[[], Awaitable[GatewayConfig]]


class Observability:
    def __init__(self, config: GatewayConfig, runtime_dir: str | None = None) -> None:
        settings = config.observability
        self.settings = settings
        self.control = Control(runtime_dir)
        self.loaded_at = time.time()
        self.metrics: GatewayMetrics | None = None
        self.access_log: AccessLog | None = None
        observers: list[Observer] = []
        if settings.admin is not None and settings.metrics.enabled:
            from gateway.observability.metrics import GatewayMetrics, MetricsObserver

            self.metrics = GatewayMetrics(settings.metrics, config.version)
            observers.append(MetricsObserver(self.metrics))
        if settings.access_log is not None:
            from gateway.observability.access_log import AccessLog

            metrics = self.metrics
            on_drop = metrics.access_log_dropped.inc if metrics is not None else None
            self.access_log = AccessLog(settings.access_log, on_drop)
            observers.append(self.access_log)
        if settings.tracing is not None:
            from gateway.observability.tracing_otel import TracingObserver

            self.tracing: TracingObserver | None = TracingObserver(settings.tracing)
            observers.append(self.tracing)
        else:
            self.tracing = None
        self.observers: tuple[Observer, ...] = tuple(observers)
        self._proxy: Proxy | None = None
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        #: The one reload implementation, ``gateway/ops/reload.py``'s, set by ``create_app``;
        #: this class only counts and logs its results.
        self.reloader: Reloader = _no_reloader

    # ---- wiring -------------------------------------------------------------------------

    def install(self, app: Quart, proxy: Proxy) -> ASGIApp:
        """Hook into the app's lifecycle; return the ASGI callable to serve."""
        self._proxy = proxy
        app.extensions["quartgate.observability"] = self
        app.before_serving(self.start)
        app.after_serving(self.stop)
        admin = self.settings.admin
        if admin is None:
            return proxy
        from gateway.ops.admin import AdminApp, AdminDispatch

        return AdminDispatch(proxy, AdminApp(self), admin.port)

    @property
    def state(self) -> GatewayState:
        assert self._proxy is not None
        return self._proxy.state

    async def start(self) -> None:
        if self.access_log is not None:
            self.access_log.start()
        if self.metrics is not None:
            config = self.state.config
            self.metrics.config_loaded(config.version, config.source, self.loaded_at)
        self.sync()
        if self.control.shared or (self.metrics is not None and self.metrics.multiprocess):
            self._task = asyncio.create_task(self._sync_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.access_log is not None:
            self.access_log.stop()
        if self.tracing is not None:
            self.tracing.close()
        if self.metrics is not None:
            self.metrics.close()

    # ---- operator decisions -------------------------------------------------------------

    def sync(self) -> None:
        """Apply the latest operator decisions (from another worker too) to this worker."""
        self.control.poll()
        if self.control.reloads_to_count:
            self._take_reload_counts()
        self.apply_control(self.state)
        if self.metrics is not None:
            self.metrics.sample(self.state, self.control)
            self.metrics.ready.set(1 if self.readiness()[0] else 0)
            if self._proxy is not None:
                self.metrics.loop_lag.set(self._proxy.loop_lag.lag)

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                self.sync()
                if self.control.generation != self._generation:
                    self._generation = self.control.generation
                    await self.reload_following()  # counted by the worker that was asked
            except (OSError, ValueError) as error:
                log.error("observability sync failed: %s", error)

    def apply_control(self, state: GatewayState) -> None:
        control = self.control
        for name, upstream in state.upstreams.items():
            apply_drained(upstream, control.drained_targets(name))

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready: a config is loaded, every upstream has a usable target, not draining."""
        reasons: list[str] = []
        if self.control.draining:
            reasons.append("gateway is draining")
        usable = {name: False for name in self.state.upstreams}
        for view in target_views(self.state, self.control):
            usable[view.upstream] = usable[view.upstream] or view.usable
        for name, ok in usable.items():
            if not ok:
                reasons.append(f"upstream {name!r} has no healthy, undrained target")
        return not reasons, reasons

    # ---- reload -------------------------------------------------------------------------

    async def request_reload(self) -> tuple[GatewayConfig, str]:
        """Reload here now and have every other worker follow; (new config, old version)."""
        previous = self.state.config.version
        config = await self._reload_counted()
        if self.control.shared:
            with self.control.change() as control:
                control.generation += 1
                self._generation = control.generation
        return config, previous

    async def reload_counted(self) -> None:
        """SIGHUP. With several workers the supervisor checked and counted it already."""
        if self.control.shared:
            await self.reload_following()
            return
        with contextlib.suppress(ConfigError):
            await self._reload_counted()

    async def reload_following(self) -> None:
        """Reload as one of several workers: the reload is counted elsewhere, once."""
        with contextlib.suppress(ConfigError):
            await self._reload_counted(count=False)

    async def _reload_counted(self, count: bool = True) -> GatewayConfig:
        metrics = self.metrics if count else None
        try:
            config = await self.reloader()
        except ConfigError as error:
            if metrics is not None:
                metrics.config_reloads.labels("failure").inc()
            log.error("config reload failed:\n%s", error)
            raise
        self.loaded_at = time.time()
        if metrics is not None:
            metrics.config_reloads.labels("success").inc()
        if self.metrics is not None:
            self.metrics.config_loaded(config.version, config.source, self.loaded_at)
        log.info("config reloaded: %s (version %s)", config.source, config.version)
        return config

    def _take_reload_counts(self) -> None:
        """Count the reloads the supervisor checked, in this worker only (under the lock)."""
        with self.control.change() as control:
            taken, control.reloads_to_count = control.reloads_to_count, {}
        if self.metrics is not None:
            for result, n in taken.items():
                self.metrics.config_reloads.labels(result).inc(n)

    def describe_config(self) -> dict[str, Any]:
        config = self.state.config
        return {
            "version": config.version,
            "source": config.source,
            "loaded_at": self.loaded_at,
            "routes": len(config.routes),
            "upstreams": len(config.upstreams) + len(config.app_upstreams),
        }


async def _no_reloader() -> GatewayConfig:
    raise RuntimeError("Observability.reloader is set by create_app (gateway/ops/reload.py)")
