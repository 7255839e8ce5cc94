"""What observability adds to one app: its observers, admin listener and lifecycle.

``create_app`` builds the :class:`Instruments` first (the snapshot's requests report to
them), then the proxy and its reloader, then the :class:`Observability` that joins them: it
wraps the proxy with the admin dispatcher when ``[admin]`` is set, and starts and stops the
access-log writer and the once-a-second sync task with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from gateway.asgi_types import ASGIApp
from gateway.cache.redis_store import RedisStore
from gateway.cache.store import purge_here
from gateway.config import GatewayConfig
from gateway.edge.context import Observer
from gateway.observability.targets import apply_control, target_views

if TYPE_CHECKING:
    from quart import Quart

    from gateway.observability.access_log import AccessLog
    from gateway.observability.metrics import GatewayMetrics
    from gateway.observability.sections import ObservabilitySettings
    from gateway.observability.tracing_otel import TracingObserver
    from gateway.ops.control import Control
    from gateway.ops.reload import HotReload
    from gateway.proxy import Proxy
    from gateway.state import GatewayState

log = logging.getLogger("quartgate")

#: How often each worker looks for decisions made in another worker, and samples gauges.
SYNC_INTERVAL = 1.0


class Instruments:
    """The observers a config asks for: metrics, access log, tracing.

    Built before the snapshot (whose requests report to them) and kept across reloads;
    none when nothing is configured, so the hot path does no work.
    """

    def __init__(self, config: GatewayConfig) -> None:
        settings = config.observability
        self.metrics: GatewayMetrics | None = None
        self.access_log: AccessLog | None = None
        self.tracing: TracingObserver | None = None
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

            self.tracing = TracingObserver(settings.tracing)
            observers.append(self.tracing)
        self.observers: tuple[Observer, ...] = tuple(observers)


class Observability:
    """The running app seen from outside: readiness, the admin API, gauges, the sync task."""

    def __init__(
        self,
        settings: ObservabilitySettings,
        instruments: Instruments,
        control: Control,
        proxy: Proxy,
        reloader: HotReload,
    ) -> None:
        self.settings = settings
        self.control = control
        self.instruments = instruments
        self.metrics = instruments.metrics
        self.tracing = instruments.tracing
        self.reloader = reloader
        self._proxy = proxy
        self._task: asyncio.Task[None] | None = None
        #: The last cache purge this worker applied (None: none looked at yet).
        self._purged: int | None = None

    # ---- wiring -------------------------------------------------------------------------

    def install(self, app: Quart) -> ASGIApp:
        """Hook into the app's lifecycle; return the ASGI callable to serve."""
        proxy = self._proxy
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
        return self._proxy.state

    async def start(self) -> None:
        if self.instruments.access_log is not None:
            self.instruments.access_log.start()
        if self.metrics is not None:
            config = self.state.config
            self.metrics.config_loaded(config.version, config.source, self.reloader.loaded_at)
        self.sync()
        if self.control.shared or (self.metrics is not None and self.metrics.multiprocess):
            self._task = asyncio.create_task(self._sync_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.instruments.access_log is not None:
            self.instruments.access_log.stop()
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
        self._apply_purges()
        apply_control(self.state, self.control)
        if self.metrics is not None:
            self.metrics.sample(self.state, self.control)
            self.metrics.ready.set(1 if self.readiness()[0] else 0)
            self.metrics.loop_lag.set(self._proxy.loop_lag.lag)

    async def purge_cache(self, route: str, path: str) -> int:
        """``POST /admin/cache/purge``: the shared (Redis) store and this worker's memory
        store now, every other worker's memory store at its next sync (within a second);
        how many entries went."""
        with self.control.change():
            self._purged = self.control.purge(route, path)
        target = path.encode("latin-1") if path else None
        removed = purge_here(route or None, target)
        shared = {  # one per Redis key prefix: the routes' stores are the same keys
            store.prefix: store
            for runtime in self.state.runtimes.values()
            if runtime.cache is not None and isinstance(store := runtime.cache.store, RedisStore)
        }
        for store in shared.values():
            removed += await store.remove_under(route or None, target)
        return removed

    def _apply_purges(self) -> None:
        purges = self.control.purges
        if self._purged is None:  # a new worker: its store holds nothing purged before
            self._purged = purges[-1][0] if purges else 0
            return
        for number, route, path in purges:
            if number > self._purged:
                purge_here(route or None, path.encode("latin-1") if path else None)
                self._purged = number

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                self.sync()
                await self.reloader.follow()  # a reload another worker was asked for
            except (OSError, ValueError) as error:
                log.error("observability sync failed: %s", error)

    def readiness(self) -> tuple[bool, list[str]]:
        """Ready: a config is loaded and not draining; with ``[admin] readiness =
        "upstreams"``, also every upstream has a usable target."""
        reasons: list[str] = []
        if self.control.draining:
            reasons.append("gateway is draining")
        admin = self.settings.admin
        if admin is None or admin.readiness != "upstreams":
            return not reasons, reasons
        usable = {name: False for name in self.state.upstreams}
        for view in target_views(self.state, self.control):
            usable[view.upstream] = usable[view.upstream] or view.usable
        for name, ok in usable.items():
            if not ok:
                reasons.append(f"upstream {name!r} has no healthy, undrained target")
        return not reasons, reasons

    # ---- reload -------------------------------------------------------------------------

    async def request_reload(self) -> tuple[GatewayConfig, str]:
        """``POST /admin/reload``: here now, every other worker follows."""
        return await self.reloader.request()

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
            "loaded_at": self.reloader.loaded_at,
            "routes": len(config.routes),
            "upstreams": len(config.upstreams) + len(config.app_upstreams),
        }
