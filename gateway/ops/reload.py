"""Hot reload: load the config file again and swap the gateway's snapshot, losing nothing.

New requests take the new snapshot (``Proxy.state`` is read once per request); requests in
flight finish on the old one, whose upstreams close once those requests are done. A file
that does not load is refused with every ``file: key: reason`` logged, and the old
snapshot stays. Triggered by SIGHUP (``quartgate reload`` sends it) or ``POST
/admin/reload``; with several workers, the one that was asked bumps the shared generation
(gateway/ops/control.py) and the others follow it.

Each reload is logged once (``config reloaded: ...`` or ``config reload refused, ...``) and
counted once in ``quartgate_config_reloads_total``, however many workers reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, GatewayConfig, Problem, load_config
from gateway.logs import apply_logging
from gateway.observability.targets import apply_control
from gateway.server.limits import ServerLimits
from gateway.state import build_state

if TYPE_CHECKING:
    from gateway.observability.metrics import GatewayMetrics
    from gateway.ops.control import Control
    from gateway.proxy import Proxy

log = logging.getLogger("quartgate")


def reload_problems(old: GatewayConfig, new: GatewayConfig) -> list[Problem]:
    """What a running gateway cannot take from a new file without a restart.

    Checked in each worker and, with several workers, by the supervisor before it passes
    the reload on, so a refused reload is refused (and counted) once.
    """
    problems = []
    if new.app_upstreams != old.app_upstreams:
        reason = "in-process app upstreams changed: that needs a restart"
        problems.append(Problem(new.source, "upstreams", reason))
    if new.server != old.server:
        problems.append(
            Problem(new.source, "server.engine", "the engine changed: that needs a restart")
        )
    return problems


#: ``[section]`` -> what ``GatewayConfig.observability`` holds it as; these are set up
#: once, when the app starts (listeners, writers, exporters), so a reload leaves them.
RESTART_SECTIONS = ("admin", "metrics", "access_log", "tracing")


def needs_restart(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The sections a reload accepts but applies only at the next start."""
    return [
        name
        for name in RESTART_SECTIONS
        if getattr(old.observability, name) != getattr(new.observability, name)
    ]


class HotReload:
    """Reloads one app's :class:`Proxy` snapshot from its config file, and says so once."""

    def __init__(
        self,
        proxy: Proxy,
        control: Control,
        environ: Mapping[str, str],
        limits: ServerLimits | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._proxy = proxy
        #: Operator decisions: re-applied to each new snapshot; with several workers, also
        #: the generation every worker follows and the counts the supervisor leaves.
        self._control = control
        #: The variables a config may name (``[admin] token_env``), as the app was given.
        self._environ = environ
        #: The server engine's limits (gateway/server/limits.py), refilled on each reload.
        self._limits = limits
        self._metrics = metrics
        self._generation = control.generation
        #: When the config in force was loaded (``/admin/config``, the info metric).
        self.loaded_at = time.time()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lock = asyncio.Lock()

    async def reload(self) -> GatewayConfig:
        """Swap in a snapshot built from the file again; raise :class:`ConfigError` if not.

        Neither logged nor counted: that is :meth:`request`'s, :meth:`follow`'s and
        SIGHUP's, which call this.
        """
        async with self._lock:  # two SIGHUPs in a row: one reload after the other
            old = self._proxy.state
            config = load_config(old.config.source, environ=self._environ)
            problems = reload_problems(old.config, config)
            if problems:
                raise ConfigError(problems)
            state = build_state(config, old.observers, old.loop_lag)
            apply_logging(config.observability.logging)
            apply_control(state, self._control)
            state.start()
            self._proxy.state = state
            if self._limits is not None:  # header_timeout, max_header_size: both engines
                self._limits.apply(config.gateway)
            for name in needs_restart(old.config, config):
                log.warning(
                    "%s: [%s] changed: that takes effect at the next start", config.source, name
                )
            self._keep(asyncio.ensure_future(old.retire()))
            return config

    async def request(self) -> tuple[GatewayConfig, str]:
        """Reload here now and have every other worker follow; (new config, old version)."""
        previous = self._proxy.state.config.version
        config = await self._reload(count=True)
        if self._control.shared:
            with self._control.change() as control:
                control.generation += 1
                self._generation = control.generation
        return config, previous

    async def follow(self) -> None:
        """Reload if another worker was asked to since the last look (the sync task's)."""
        if self._control.generation == self._generation:
            return
        self._generation = self._control.generation
        with contextlib.suppress(ConfigError):
            await self._reload(count=False)  # counted by the worker that was asked

    async def on_signal(self) -> None:
        """SIGHUP. With several workers the supervisor checked and counted it already."""
        with contextlib.suppress(ConfigError):
            await self._reload(count=not self._control.shared)

    async def _reload(self, count: bool) -> GatewayConfig:
        metrics = self._metrics
        try:
            config = await self.reload()
        except ConfigError as error:
            if count and metrics is not None:
                metrics.config_reloads.labels("failure").inc()
            log.error(
                "config reload refused, the running config stays (pid %d): %s",
                os.getpid(),
                "; ".join(str(p) for p in error.problems),
            )
            raise
        self.loaded_at = time.time()
        if metrics is not None:
            if count:
                metrics.config_reloads.labels("success").inc()
            metrics.config_loaded(config.version, config.source, self.loaded_at)
        log.info(
            "config reloaded: %s (version %s): %d routes, %d upstreams (pid %d)",
            config.source,
            config.version,
            len(config.routes),
            len(config.upstreams) + len(config.app_upstreams),
            os.getpid(),
        )
        return config

    def install_signal(self) -> None:
        """Reload on SIGHUP in this process's event loop (where signals can be handled)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # no signals here (a thread)
            return

    def remove_signal(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        self._keep(asyncio.ensure_future(self.on_signal()))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Server shutdown: stop waiting; retiring snapshots close their upstreams now."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
