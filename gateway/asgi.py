"""Entry point for plain Hypercorn: ``hypercorn --config hypercorn.toml gateway.asgi:app``.

The config path comes from ``QUARTGATE_CONFIG`` (default ``gateway.toml``); this is the one
place that reads the environment, and only because an ASGI server imports by name.
``QUARTGATE_ENGINE`` says which server imports it (``quartgate serve`` sets it; default
``hypercorn``): only under Hypercorn are its workarounds installed.
"""

from __future__ import annotations

import os

from gateway.app import create_app
from gateway.config import load_config
from gateway.logs import configure_logging
from gateway.server.tuning import tune_gc

configure_logging()
app = create_app(
    load_config(os.environ.get("QUARTGATE_CONFIG", "gateway.toml")),
    runtime_dir=os.environ.get("QUARTGATE_RUNTIME_DIR"),
)
if os.environ.get("QUARTGATE_ENGINE", "hypercorn") == "hypercorn":
    from gateway.server import hypercorn_patches

    hypercorn_patches.apply()  # checked names first: gateway/server/hypercorn_patches.py
tune_gc()  # after the app is built: what exists now lives as long as the worker
