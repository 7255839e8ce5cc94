"""``gateway.toml``, declared once and validated in one pass (docs/configuration.md).

- :mod:`~gateway.config.model`: what a file becomes (:class:`GatewayConfig`, per route a
  ``RouteSpec`` and its :class:`RoutePolicies`).
- :mod:`~gateway.config.schema`: the document, table by table; each table's settings are
  declared on the dataclass that owns them, :mod:`~gateway.config.tables` derives the
  strict pydantic model from it, and ``*_tables`` modules add what no type can say.
- :mod:`~gateway.config.checks`: the checks tables share (bounds, choices, names).
- :mod:`~gateway.config.references`: the checks across tables.
- :mod:`~gateway.config.problems`: every problem as a ``file: key: reason`` line.
- :mod:`~gateway.config.loader`: file -> TOML -> validated config, with its version hash.
"""

from __future__ import annotations

from gateway.config.loader import engine_warnings, load_config, parse_config
from gateway.config.model import (
    ENGINES,
    AppUpstreamSpec,
    GatewayConfig,
    GatewaySettings,
    RoutePolicies,
    ServerSettings,
)
from gateway.config.problems import ConfigError, Problem

__all__ = [
    "ENGINES",
    "AppUpstreamSpec",
    "ConfigError",
    "GatewayConfig",
    "GatewaySettings",
    "Problem",
    "RoutePolicies",
    "ServerSettings",
    "engine_warnings",
    "load_config",
    "parse_config",
]
