"""Entry point for plain Hypercorn: ``hypercorn --config hypercorn.toml gateway.asgi:app``.

The config path comes from ``QUARTGATE_CONFIG`` (default ``gateway.toml``); this is the one
place that reads the environment, and only because an ASGI server imports by name.
"""

from __future__ import annotations

import os

from gateway.app import create_app
from gateway.config import load_config
from gateway.logs import configure_logging
from gateway.server.tuning import close_dead_connections, tune_gc

configure_logging()
app = create_app(
    load_config(os.environ.get("QUARTGATE_CONFIG", "gateway.toml")),
    runtime_dir=os.environ.get("QUARTGATE_RUNTIME_DIR"),
)
close_dead_connections()  # a Hypercorn 0.18 workaround: gateway/server/tuning.py
tune_gc()  # after the app is built: what exists now lives as long as the worker
