"""Hypercorn settings from ``hypercorn.toml``, checked key by key.

Hypercorn's own ``Config.from_toml`` accepts unknown keys silently (PITFALLS.md): a misspelt
``keep_alive_timout`` would leave the default in force. Here it is an error.
"""

from __future__ import annotations

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
    config = Config.from_mapping(settings)
    config.application_path = "gateway.asgi:app"
    return config
