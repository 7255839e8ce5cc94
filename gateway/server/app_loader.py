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
from gateway.server.tuning import tune_gc


def build_app(environment: Environment) -> Quart:
    """Logging, the config, its in-process apps, then the app itself."""
    configure_logging()
    config = load_config(environment.config_path, environ=environment.variables)
    app = create_app(
        config,
        runtime_dir=environment.runtime_dir,
        apps=load_apps(config),
        environ=environment.variables,
    )
    if environment.engine == "hypercorn":
        from gateway.server import hypercorn_patches

        hypercorn_patches.apply()  # checked names first: gateway/server/hypercorn_patches.py
    tune_gc()  # after the app is built: what exists now lives as long as the worker
    return app
