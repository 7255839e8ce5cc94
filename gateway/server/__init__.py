"""How ``quartgate serve`` runs the gateway: engines, the supervisor, server settings.

- ``hypercorn_toml``: the server settings file (``hypercorn.toml``), checked key by key, and
  which keys each engine honours.
- ``supervisor``: workers, SIGTERM drain, SIGHUP reload checked by the master first.
- ``hypercorn_engine`` / ``uvicorn_engine``: one serving worker on each engine.
- ``drain``: the SIGTERM drain both engines share.
- ``hypercorn_patches``: the Hypercorn-private names the Hypercorn engine touches, checked at
  start-up; ``protocol_guard``: the HTTP/1.1 rules Hypercorn and h11 lack, likewise checked.
- ``app_loader``: the app one worker serves, and its process-wide GC settings.

docs/server.md says what each engine supports and why uvicorn is the fast one.
"""

from __future__ import annotations

from gateway.server.hypercorn_toml import DEFAULTS, ServerConfig, load_server_config

__all__ = ["DEFAULTS", "ServerConfig", "load_server_config"]
