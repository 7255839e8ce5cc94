"""The app one worker serves, built from an :class:`~gateway.environment.Environment`.

``quartgate serve`` calls :func:`build_app` in each worker with what its command line
said; ``gateway.asgi`` calls it with the process environment, for a plain ASGI server.
"""

from __future__ import annotations

from quart import Quart

from gateway.app import create_app
from gateway.config import load_config
from gateway.environment import Environment
from gateway.inprocess import load_apps
from gateway.logs import configure_logging
from gateway.server.limits import ServerLimits
from gateway.server.tuning import tune_gc


def build_app(environment: Environment, limits: ServerLimits | None = None) -> Quart:
    """Logging, the config, its in-process apps, then the app itself.

    ``limits``: the engine's, which the app fills from ``[gateway]`` and a reload refills
    (gateway/server/limits.py); None when no engine of the gateway's reads them.
    """
    configure_logging()
    config = load_config(environment.config_path, environ=environment.variables)
    app = create_app(
        config,
        runtime_dir=environment.runtime_dir,
        apps=load_apps(config),
        environ=environment.variables,
        limits=limits,
    )
    tune_gc()  # after the app is built: what exists now lives as long as the worker
    return app
