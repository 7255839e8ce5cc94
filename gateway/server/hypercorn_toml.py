"""Server settings from ``hypercorn.toml``, checked key by key, for either engine.

The file keeps Hypercorn's key names on both engines (it is Hypercorn's ``Config``, which
also makes the listening sockets). Hypercorn's own ``Config.from_toml`` accepts unknown keys
silently: a misspelt ``keep_alive_timout`` would leave the default in force. Here it is an
error, and so is a key the chosen engine would not honour (:data:`UVICORN_KEYS`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from gateway.config import ConfigError, Problem
from gateway.config.loader import read_toml

#: What quartgate chooses where Hypercorn's defaults do not suit a gateway; each is
#: explained in docs/server.md. A hypercorn.toml overrides them.
DEFAULTS: dict[str, Any] = {
    "bind": ["127.0.0.1:8080"],
    "worker_class": "uvloop",
    "workers": 1,
    "keep_alive_timeout": 75.0,
    "keep_alive_max_requests": 1_000_000,
    "graceful_timeout": 30.0,
    "backlog": 4096,
    "accesslog": None,
    "errorlog": "-",
}


#: The hypercorn.toml keys the uvicorn engine honours, each with the same meaning
#: (gateway/server/uvicorn_engine.py); any other key set in the file is refused with it.
UVICORN_KEYS = frozenset(
    {
        "bind",
        "workers",
        "worker_class",
        "keep_alive_timeout",
        "keep_alive_max_requests",
        "graceful_timeout",
        "backlog",
        "h11_max_incomplete_size",
        "include_date_header",
        "include_server_header",
        "pid_path",
        "errorlog",
    }
)
#: Why a key is refused on uvicorn, where there is more to say than "not supported".
UVICORN_WHY = {
    "certfile": "TLS is served by the hypercorn engine only (or terminate TLS in front)",
    "keyfile": "TLS is served by the hypercorn engine only (or terminate TLS in front)",
    "alpn_protocols": "HTTP/2 is served by the hypercorn engine only",
    "accesslog": "use [access_log] in the gateway config: it works on both engines",
    "read_timeout": "uvicorn has no per-read timeout; keep_alive_timeout bounds a slow head",
}


class ServerConfig(Config):
    """Hypercorn's ``Config``, with the headers it adds to every response built once a second.

    Hypercorn calls ``response_headers()`` for each response and formats ``Date`` with
    wsgiref every time (about 3% of a worker's CPU in loadtests' profile); the value only
    changes once a second. Same headers, same rules (include_date_header, ...), cached.
    """

    def __init__(self) -> None:
        super().__init__()
        self._response_headers: dict[str, tuple[int, list[tuple[bytes, bytes]]]] = {}

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        cached = self._response_headers.get(protocol)
        if cached is None or cached[0] != second:
            cached = (second, super().response_headers(protocol))
            self._response_headers[protocol] = cached
        return list(cached[1])  # a copy: callers own the list they get


def load_server_config(
    path: str | Path | None,
    *,
    bind: list[str] | None = None,
    workers: int | None = None,
    engine: str = "hypercorn",
) -> Config:
    """The settings in ``path`` (or the defaults), checked for ``engine``.

    A :class:`ConfigError` names every key that is not a Hypercorn setting and, on the
    uvicorn engine, every key it would not honour, as ``file: key: reason``.
    """
    settings = dict(DEFAULTS)
    if path is not None:
        file = str(path)
        data = read_toml(path)[1]
        problems = [
            Problem(file, key, "not a Hypercorn setting")
            for key in data
            if key.startswith("_") or not hasattr(Config, key)
        ]
        if "application_path" in data:
            problems.append(Problem(file, "application_path", "is set by quartgate"))
        if engine == "uvicorn":
            problems += [
                Problem(file, key, UVICORN_WHY.get(key, "not supported by the uvicorn engine"))
                for key in data
                if key not in UVICORN_KEYS and hasattr(Config, key)
            ]
            worker_class = data.get("worker_class", "uvloop")
            if worker_class not in ("asyncio", "uvloop"):
                reason = f"the uvicorn engine runs asyncio or uvloop, not {worker_class!r}"
                problems.append(Problem(file, "worker_class", reason))
        if problems:
            raise ConfigError(problems)
        settings.update(data)
    if bind:
        settings["bind"] = bind
    if workers is not None:
        settings["workers"] = workers
    config = ServerConfig.from_mapping(settings)
    config.application_path = "gateway.asgi:app"  # for the record: workers build the app
    return config
