"""The server engines ``quartgate serve`` runs, behind one written interface.

An engine serves one worker process: ``run_worker(config, environment, sockets, ready)``
builds the app (:func:`gateway.server.app_loader.build_app`, handing it the worker's
:class:`~gateway.server.limits.ServerLimits`), installs what it changes of its server (its
own patches, only in its own worker, after checking every private name it relies on:
gateway/server/private_names.py), serves until SIGTERM/SIGINT, drains and returns. Each
engine's module is imported only when that engine runs, so the uvicorn engine never loads
Hypercorn's protocol patches and the Hypercorn engine needs no uvicorn installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hypercorn.config import Config, Sockets

    from gateway.environment import Environment


class RunWorker(Protocol):
    """What every engine module defines as ``run_worker``."""

    def __call__(
        self,
        config: Config,
        environment: Environment,
        sockets: Sockets | None = None,
        ready: Event | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Engine:
    name: str
    #: What it needs installed beyond the base dependencies (pyproject's extras).
    packages: tuple[str, ...]
    #: Imports the engine's module and gives its ``run_worker``.
    load: Callable[[], RunWorker]

    def missing_packages(self) -> list[str]:
        """The packages this engine needs that are not installed (``[fast]`` extra)."""
        return [name for name in self.packages if importlib.util.find_spec(name) is None]


def _hypercorn() -> RunWorker:
    from gateway.server.hypercorn_engine import run_worker

    return run_worker


def _uvicorn() -> RunWorker:
    from gateway.server.uvicorn_engine import run_worker

    return run_worker


#: ``[server] engine`` -> the engine (gateway.config.ENGINES names the same).
ENGINES: dict[str, Engine] = {
    "hypercorn": Engine("hypercorn", (), _hypercorn),
    "uvicorn": Engine("uvicorn", ("uvicorn", "httptools", "websockets"), _uvicorn),
}
