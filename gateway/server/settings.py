"""Hypercorn settings from ``hypercorn.toml``, checked key by key.

Hypercorn's own ``Config.from_toml`` accepts unknown keys silently (PITFALLS.md): a misspelt
``keep_alive_timout`` would leave the default in force. Here it is an error.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

from hypercorn.config import Config

from gateway.config import ConfigError, Problem

#: What quartgate chooses where Hypercorn's defaults do not suit a gateway; each is
#: explained in docs/server.md. A hypercorn.toml overrides them.
DEFAULTS: dict[str, Any] = {
    "bind": ["127.0.0.1:8080"],
    "worker_class": "uvloop",
    "workers": 1,
    "keep_alive_timeout": 75.0,
    "keep_alive_max_requests": 1_000_000,
    "graceful_timeout": 30.0,
    "backlog": 2048,
    "accesslog": None,
    "errorlog": "-",
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
) -> Config:
    settings = dict(DEFAULTS)
    if path is not None:
        file = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError([Problem(file, "-", f"cannot read file: {error.strerror}")]) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError([Problem(file, "-", f"invalid TOML: {error}")]) from None
        problems = [
            Problem(file, key, "not a Hypercorn setting")
            for key in data
            if key.startswith("_") or not hasattr(Config, key)
        ]
        if "application_path" in data:
            problems.append(Problem(file, "application_path", "is set by quartgate"))
        if problems:
            raise ConfigError(problems)
        settings.update(data)
    if bind:
        settings["bind"] = bind
    if workers is not None:
        settings["workers"] = workers
    config = ServerConfig.from_mapping(settings)
    config.application_path = "gateway.asgi:app"
    return config
