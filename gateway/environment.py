"""The one place that reads the process environment.

Everything else takes its inputs as arguments: ``create_app(config, ...)`` builds an app
from a config object, ``load_config(path, environ=...)`` is handed the variables a config
may name (``[admin] token_env``), and ``quartgate serve`` passes an :class:`Environment` to
each worker it starts instead of exporting variables for the worker to read back.

The environment is read only where a process begins without arguments of its own: under a
plain ASGI server that imports ``gateway.asgi:app`` by name (``QUARTGATE_CONFIG`` and the
rest below), and in ``quartgate`` itself, which reads it once and passes it on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The config file the app serves (default ``gateway.toml``, relative to the working
#: directory).
CONFIG = "QUARTGATE_CONFIG"
#: The server that imports the app: ``hypercorn`` (its workarounds are installed) or
#: ``uvicorn``.
ENGINE = "QUARTGATE_ENGINE"
#: The directory the workers of one ``quartgate serve`` share (operator decisions).
RUNTIME_DIR = "QUARTGATE_RUNTIME_DIR"
#: prometheus-client's multiprocess directory: an operator's own value wins.
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class Environment:
    """What a worker needs to build its app, beyond the config file itself."""

    config_path: str = "gateway.toml"
    engine: str = "hypercorn"
    runtime_dir: str | None = None
    #: The variables a config may name (``[admin] token_env``), copied once.
    variables: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """From ``environ``, by default the process environment (read here only)."""
        env = os.environ if environ is None else environ
        return cls(
            config_path=env.get(CONFIG, "gateway.toml"),
            engine=env.get(ENGINE, "hypercorn"),
            runtime_dir=env.get(RUNTIME_DIR) or None,
            variables=dict(env),
        )

    @property
    def metrics_dir(self) -> str | None:
        """The operator's ``PROMETHEUS_MULTIPROC_DIR``, if set."""
        return self.variables.get(PROMETHEUS_MULTIPROC_DIR) or None
