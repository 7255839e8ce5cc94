"""The app factory: ``create_app(config, ...)`` builds everything from its arguments; it reads
no environment and imports nothing by name (gateway/environment.py, gateway/asgi.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import cast

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from gateway.asgi_types import ASGIApp
from gateway.config import GatewayConfig
from gateway.edge.errors import error_body
from gateway.inprocess import BLUEPRINT, InProcessApp
from gateway.observability.runtime import Instruments, Observability
from gateway.ops.control import Control
from gateway.ops.reload import HotReload
from gateway.proxy import Proxy
from gateway.server.limits import ServerLimits
from gateway.state import build_state


def create_app(
    config: GatewayConfig,
    runtime_dir: str | None = None,
    apps: Mapping[str, InProcessApp] | None = None,
    environ: Mapping[str, str] | None = None,
    limits: ServerLimits | None = None,
) -> Quart:
    """A Quart app whose proxied routes are served by the :class:`Proxy` layer in front.

    ``runtime_dir`` is where the workers of one ``quartgate serve`` share operator
    decisions (drains, reloads); None for a single worker. ``apps`` are the config's
    in-process upstreams, imported by the caller (``gateway.inprocess.load_apps``): each
    ``[upstreams.X] app`` needs its entry. ``environ`` holds the variables a reloaded
    config may name (``[admin] token_env``); the app never reads the process environment.
    ``limits`` are the server engine's (gateway/server/limits.py): filled from ``[gateway]``
    now and on every reload. Nothing here patches a server; each engine installs its own.
    """
    limits = limits if limits is not None else ServerLimits()
    limits.apply(config.gateway)
    apps = dict(apps or {})
    missing = sorted(set(config.app_upstreams) - set(apps))
    if missing:
        raise ValueError(f"create_app: no in-process app given for {', '.join(missing)}")
    app = _quart("quartgate")
    for name, inprocess in apps.items():
        if inprocess.kind == BLUEPRINT:
            # Its own Quart app, the blueprint at its root under its own name: url_for
            # ("shop.index") works, and under strip_prefix (root_path) its URLs are the
            # public ones, as for any ASGI app (docs/in-process-apps.md).
            blueprint_app = _quart(f"quartgate.{name}")
            blueprint_app.register_blueprint(inprocess.obj)
            apps[name] = dataclasses.replace(inprocess, asgi=cast(ASGIApp, blueprint_app))

    # Built in the order they need each other, each complete when made: the instruments
    # (the snapshot's requests report to them), the snapshot and the proxy serving it, the
    # reloader that swaps it (docs/reload.md: SIGHUP, `quartgate reload`, the admin API),
    # and the observability joining them (readiness, admin API, sync task).
    instruments = Instruments(config)
    control = Control(runtime_dir)
    proxy = Proxy(cast(ASGIApp, app.asgi_app), build_state(config, instruments.observers))
    proxy.apps.update(apps)
    reloader = HotReload(proxy, control, environ or {}, limits, instruments.metrics)
    observability = Observability(config.observability, instruments, control, proxy, reloader)
    app.asgi_app = observability.install(app)  # type: ignore[method-assign,assignment]
    app.extensions["quartgate"] = proxy
    # A drain (SIGTERM, gateway/server/drain.py) closes open WebSocket sessions with 1001.
    app.extensions["quartgate.going_away"] = proxy.sessions.going_away
    app.extensions["quartgate.reload"] = reloader

    @app.before_serving
    async def start_background() -> None:
        proxy.state.start()  # active health checks run in the serving loop
        reloader.install_signal()
        await proxy.lifespans.startup()  # in-process ASGI apps' startup handlers
        proxy.loop_lag.start()  # load shedding when the worker falls behind (not before)

    @app.after_serving
    async def close_upstreams() -> None:
        reloader.remove_signal()
        proxy.loop_lag.stop()
        await proxy.lifespans.shutdown()
        await reloader.aclose()
        await proxy.state.aclose()

    return app


def _quart(name: str) -> Quart:
    """A Quart app as the gateway configures one: no cap or timeout of Quart's own (the
    gateway sets its own, docs/known-defects.md), errors as the gateway's JSON body."""
    app = Quart(name)
    app.config.update(
        MAX_CONTENT_LENGTH=None,
        BODY_TIMEOUT=None,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.register_error_handler(HTTPException, _http_error)
    return app


async def _http_error(error: HTTPException) -> Response:
    from quart import request

    request_id = request.headers.get("x-request-id", "")
    code = (error.name or "error").lower().replace(" ", "_")
    body = error_body(code, error.description or "", request_id)
    response = Response(body, status=error.code or 500, content_type="application/json")
    if error.code == 405:
        for name, value in error.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
    return response
