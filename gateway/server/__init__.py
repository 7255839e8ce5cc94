"""How ``quartgate serve`` runs the gateway: engines, the supervisor, server settings.

- ``settings``: the server settings file (``hypercorn.toml``), checked key by key, and
  which keys each engine honours.
- ``supervisor``: workers, SIGTERM drain, SIGHUP reload checked by the master first.
- ``hypercorn_engine`` / ``uvicorn_engine``: one serving worker on each engine.
- ``hypercorn_patches``: every Hypercorn-private name the gateway touches, checked at start-up.
- ``tuning``: process-wide settings of a worker (GC).
"""

from __future__ import annotations

from gateway.server.settings import DEFAULTS, ServerConfig, load_server_config

__all__ = ["DEFAULTS", "ServerConfig", "load_server_config"]
