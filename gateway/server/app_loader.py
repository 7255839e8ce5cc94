"""The app one worker serves, built from an :class:`~gateway.environment.Environment`.

``quartgate serve`` calls :func:`build_app` in each worker with what its command line
said; ``gateway.asgi`` calls it with the process environment, for a plain ASGI server.

The engines then tune the worker process once the app is built (:func:`tune_gc`).
Measured under wrk load (loadtests/README.md): with CPython's defaults the collector took
about 8% of a worker's CPU, most of it in full collections that walk every long-lived
object of the app (Quart, the server, config, route tables) once a second. Freezing what
exists after start-up moves it out of the collector's sight, and a higher young-generation
threshold collects the short-lived request objects in larger, rarer batches: 0.2% of CPU.
A hot reload builds a new snapshot after the freeze; the old one is still freed by
reference counting, only reference cycles in it would stay (none are known). The same on
every engine.
"""

from __future__ import annotations

import gc

from quart import Quart

from gateway.app import create_app
from gateway.config import load_config
from gateway.environment import Environment
from gateway.inprocess import load_apps
from gateway.logs import configure_logging
from gateway.server.limits import ServerLimits


def build_app(environment: Environment, limits: ServerLimits | None = None) -> Quart:
    """Logging, the config, its in-process apps, then the app itself.

    ``limits``: the engine's, which the app fills from ``[gateway]`` and a reload refills
    (gateway/server/limits.py); None when no engine of the gateway's reads them.
    """
    configure_logging()
    config = load_config(environment.config_path, environ=environment.variables)
    configure_logging(config.observability.logging)
    app = create_app(
        config,
        runtime_dir=environment.runtime_dir,
        apps=load_apps(config),
        environ=environment.variables,
        limits=limits,
    )
    tune_gc()  # after the app is built: what exists now lives as long as the worker
    return app


def admin_bind(app: Quart) -> str | None:
    """The ``[admin] bind`` of the app's config (to tell its listener apart in the log)."""
    admin = app.extensions["quartgate"].state.config.observability.admin
    return admin.bind if admin is not None else None


# ---- process-wide tuning of a serving worker -----------------------------------------------

#: (young, middle, old): young collections every 10,000 net container allocations instead
#: of 700 (a few dozen requests instead of a few); the others as CPython's ratios.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
