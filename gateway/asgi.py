"""Entry point for a plain ASGI server: ``hypercorn --config hypercorn.toml gateway.asgi:app``.

A server that imports an app by name gives it no arguments, so this module, and only this
module, builds the app from the process environment when it is imported
(gateway/environment.py: ``QUARTGATE_CONFIG``, default ``gateway.toml``;
``QUARTGATE_ENGINE``, default ``hypercorn``: only under Hypercorn are its workarounds
installed). ``quartgate serve`` never imports it: its workers call
:func:`gateway.server.app_loader.build_app` with what the command line said.
"""

from __future__ import annotations

from gateway.environment import Environment
from gateway.server.app_loader import build_app
from gateway.server.limits import ServerLimits


def _limits(environment: Environment) -> ServerLimits | None:
    """Under Hypercorn, its corrections installed (this entry is the one place outside
    gateway/server/ that asks for them) and the limits they read."""
    if environment.engine != "hypercorn":
        return None
    from gateway.server.hypercorn_engine import install

    return install()


_environment = Environment.read()
app = build_app(_environment, _limits(_environment))
