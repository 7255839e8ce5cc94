"""In-process upstreams: ``app = "module:attribute"`` names a Quart blueprint, any ASGI
application (Starlette, FastAPI, another Quart app) or any WSGI application (Flask,
Django), served in the gateway's own process with no network hop (docs/in-process-apps.md).

The kind is detected once, at startup, from the object: a Blueprint; an ``async``
callable (or an object whose ``__call__`` is ``async``) taking ``(scope, receive, send)``
is ASGI; a plain callable taking ``(environ, start_response)`` is WSGI. A callable taking
no arguments is a factory and is called first. A WSGI app runs through the gateway's WSGI
adapter (gateway/pipeline/wsgi.py) on its own bounded thread pool (``threads``), so a
handler that blocks never stalls the event loop; when every thread is busy, a request waits
for one at most ``queue_timeout`` seconds (then 503), and a client that leaves ends its
response and frees its thread.

ASGI apps get the ASGI lifespan (startup before the gateway serves, shutdown after), so
their startup handlers run; an app that does not speak lifespan is served without it. A
blueprint is served by a Quart app of its own, at its root, and is then an ASGI app like
any other (its ``before_app_serving`` hooks run in that lifespan).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from quart import Blueprint

from gateway.asgi_types import ASGIApp, Message
from gateway.config import AppUpstreamSpec, ConfigError, GatewayConfig, Problem
from gateway.pipeline.wsgi import WSGIAdapter

log = logging.getLogger("quartgate")

BLUEPRINT: Final = "blueprint"
ASGI: Final = "asgi"
WSGI: Final = "wsgi"


@dataclass(frozen=True, slots=True)
class InProcessApp:
    """One in-process upstream, ready to serve: ``asgi`` is what the dispatcher calls. For
    a blueprint it is the Quart app ``create_app`` makes for it (None until then); for a
    WSGI app it is ``wsgi``, the adapter, which the dispatcher calls with the route's wait
    for a thread."""

    name: str
    kind: str
    obj: Any
    asgi: ASGIApp | None = None
    threads: int = 0
    wsgi: WSGIAdapter | None = None

    def describe(self) -> str:
        extra = f", threads = {self.threads}" if self.kind == WSGI else ""
        return f"{self.kind}{extra}"


def import_app(spec: AppUpstreamSpec, file: str) -> tuple[str, Any]:
    """Import ``spec.app`` (modules beside the config file first); its kind and object."""
    key = f"upstreams.{spec.name}.app"
    module_name, _, attribute = spec.app.partition(":")
    folder = str(Path(file).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # modules beside the config file, as Hypercorn does for cwd
    try:
        module = importlib.import_module(module_name)
        obj: Any = getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigError([Problem(file, key, f"cannot import {spec.app!r}: {error}")]) from None
    if _is_factory(obj):
        obj = obj()
    kind = detect(obj)
    if kind is None:
        reason = (
            f"{spec.app!r} is not a Quart Blueprint, an ASGI application "
            "(async (scope, receive, send)) or a WSGI application (environ, start_response)"
        )
        raise ConfigError([Problem(file, key, reason)])
    return kind, obj


def load_apps(config: GatewayConfig) -> dict[str, InProcessApp]:
    """Import every in-process app of ``config``, by upstream name: what an entry point
    (``gateway.asgi``, a worker of ``quartgate serve``) hands to ``create_app``. Importing
    puts the config file's folder on ``sys.path``, which is why the app factory never does
    it itself."""
    return {name: load_app(spec, config.source) for name, spec in config.app_upstreams.items()}


def load_app(spec: AppUpstreamSpec, file: str) -> InProcessApp:
    kind, obj = import_app(spec, file)
    if kind == BLUEPRINT:
        return InProcessApp(spec.name, kind, obj)
    if kind == ASGI:
        return InProcessApp(spec.name, kind, obj, obj)
    adapter = WSGIAdapter(obj, spec.threads, spec.queue_timeout, spec.name)
    return InProcessApp(spec.name, kind, obj, adapter, spec.threads, adapter)


def detect(obj: Any) -> str | None:
    """``blueprint``, ``asgi`` or ``wsgi``; None for anything else."""
    if isinstance(obj, Blueprint):
        return BLUEPRINT
    if not callable(obj):
        return None
    call = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj).__call__
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(obj):
        return ASGI if _arity(obj) == 3 else None
    return WSGI if _arity(obj) == 2 else None


def _arity(obj: Any) -> int | None:
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len([p for p in positional if p.default is p.empty])


def _is_factory(obj: Any) -> bool:
    """A function or class that takes no argument (``create_app``), not an app itself."""
    if isinstance(obj, Blueprint) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return False
    if inspect.iscoroutinefunction(obj):
        return False
    return _arity(obj) == 0


class Lifespans:
    """The ASGI lifespan of each in-process ASGI app, run beside the gateway's own."""

    def __init__(self, apps: list[InProcessApp]) -> None:
        self._apps = [a for a in apps if a.kind in (ASGI, BLUEPRINT) and a.asgi is not None]
        self._running: list[tuple[asyncio.Task[None], asyncio.Queue[Message], Any]] = []
        #: Each app's lifespan state, copied into the scope of its requests (ASGI 2.4).
        self.states: dict[str, dict[str, Any]] = {}

    async def startup(self) -> None:
        for app in self._apps:
            assert app.asgi is not None
            inbox: asyncio.Queue[Message] = asyncio.Queue()
            replies: asyncio.Queue[Message] = asyncio.Queue()
            state: dict[str, Any] = {}
            scope = {
                "type": "lifespan",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "state": state,
            }
            task = asyncio.ensure_future(app.asgi(scope, inbox.get, replies.put))
            await inbox.put({"type": "lifespan.startup"})
            reply = await _first(replies, task)
            if reply is None:
                log.info("in-process app %r has no lifespan; served without it", app.name)
                continue
            if reply["type"] == "lifespan.startup.failed":
                raise RuntimeError(
                    f"in-process app {app.name!r} failed to start: {reply.get('message', '')}"
                )
            self.states[app.name] = state
            self._running.append((task, inbox, replies))

    async def shutdown(self) -> None:
        for task, inbox, replies in reversed(self._running):
            await inbox.put({"type": "lifespan.shutdown"})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_first(replies, task), 10.0)
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._running.clear()


async def _first(replies: asyncio.Queue[Message], task: asyncio.Task[None]) -> Message | None:
    """The app's reply, or None if the lifespan call ended (raised) without one."""
    getter = asyncio.ensure_future(replies.get())
    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    with contextlib.suppress(BaseException):
        task.result()  # an app without lifespan raises on the unknown scope type
    return None


def mount_point(path: str, segments: int) -> str:
    """The part of ``path`` a route of ``segments`` segments matched: the app's root_path.

    Mirrors ``Route.rewrite``: what it strips is what this returns.
    """
    index = 0
    for _ in range(segments):
        index = path.find("/", index + 1)
        if index < 0:
            return path
    return path[:index]
