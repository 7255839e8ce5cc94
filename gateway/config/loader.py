"""Reading ``gateway.toml`` into one frozen, validated :class:`GatewayConfig`.

Every problem is reported as ``file: key: reason`` and all of them at once, so an operator
fixes a file in one pass: the schema's (one pydantic pass) and the cross-references'.
Unknown keys are errors: a misspelt key silently ignored is how a proxy ends up with a
default nobody chose. The environment is an argument: config never reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.model import GatewayConfig
from gateway.config.problems import (
    SUGGESTIONS,
    ConfigError,
    Loc,
    Problem,
    key_of,
    reasons,
    toml_problem,
)
from gateway.config.references import check_references
from gateway.config.schema import DERIVED, DOCUMENT, GROUPS

_NO_ENVIRONMENT: Mapping[str, str] = types.MappingProxyType({})


def load_config(
    path: str | Path,
    *,
    environ: Mapping[str, str] = _NO_ENVIRONMENT,
    deferred: list[Problem] | None = None,
) -> GatewayConfig:
    """Read and validate a config file; raise :class:`ConfigError` naming every problem.
    ``environ``: where ``[admin] token_env`` is looked up (the caller's ``os.environ``).
    ``deferred``: when given, a secret missing from ``environ`` is no error but a problem
    appended there (``quartgate check`` in CI); the config then holds an empty secret."""
    file = str(path)
    text, data = read_toml(path)
    config = parse_config(data, file, environ=environ, deferred=deferred)
    version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return dataclasses.replace(config, version=version)


def read_toml(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A TOML file's text and document; :class:`ConfigError` when it cannot be read or
    parsed, naming the line (``file: line 2: invalid TOML: ...``)."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([Problem(file, "", f"cannot read file: {error.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, "", "cannot read file: not UTF-8 text")]) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([toml_problem(file, text, error)]) from None


def parse_config(
    data: Mapping[str, Any],
    file: str = "<config>",
    *,
    environ: Mapping[str, str] = _NO_ENVIRONMENT,
    deferred: list[Problem] | None = None,
) -> GatewayConfig:
    """Validate a parsed TOML document; key files are read relative to ``file``'s folder."""
    document = _frozen(dict(data))
    found: list[tuple[Loc, str]] = []
    secrets: list[str] | None = [] if deferred is not None else None
    context = {"base": Path(file).resolve().parent, "environ": environ, "deferred": secrets}
    values: dict[str, Any] = {}
    token = SUGGESTIONS.set({})
    try:
        values = DOCUMENT.validate_python(document, context=context)
    except ValidationError as error:
        found += reasons(error)
    finally:
        SUGGESTIONS.reset(token)
    found += check_references(document)
    if not found and not values["routes"]:
        found.append((("routes",), "at least one [[routes]] entry is required"))
    if found:
        raise ConfigError([Problem(file, key_of(loc, document), reason) for loc, reason in found])
    if deferred is not None and secrets:
        deferred += [Problem(file, "admin.token_env", reason) for reason in secrets]
    routes = values["routes"]
    tables = {key: values[key] for key in values if key not in DERIVED}
    groups = {name: cls(**_take(cls, tables)) for name, cls in GROUPS.items()}
    return GatewayConfig(
        source=file,
        upstreams=values["upstreams"].http,
        app_upstreams=values["upstreams"].apps,
        routes=tuple(spec for spec, _ in routes),
        route_policies={spec.name: policies for spec, policies in routes},
        **groups,
        **tables,
    )


def _take(cls: type[Any], tables: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the tables that are ``cls``'s fields."""
    return {f.name: tables.pop(f.name) for f in dataclasses.fields(cls)}


def _frozen(value: Any) -> Any:
    """TOML arrays as tuples: the schema is strict, and its arrays are tuples."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(item) for item in value)
    if isinstance(value, dict):
        return {key: _frozen(item) for key, item in value.items()}
    return value


def engine_warnings(config: GatewayConfig, engine: str, where: str) -> list[Problem]:
    """What the chosen engine cannot serve that the config expects: the uvicorn engine has
    no HTTP/2, so a route to an ``http2 = true`` upstream gets HTTP/1.1 clients only (no
    gRPC, which needs HTTP/2 and trailers end to end: docs/grpc.md). ``where``: where the
    engine was chosen (``server.engine in FILE``, ``--engine``)."""
    if engine != "uvicorn":
        return []
    found = []
    for index, route in enumerate(config.routes):
        spec = config.upstreams.get(route.upstream)
        if spec is not None and spec.http2:
            reason = (
                f"upstream {route.upstream!r} has http2 = true, but the uvicorn engine "
                f"({where}) serves HTTP/1.1 only: gRPC and other HTTP/2 "
                "clients need the Hypercorn engine"
            )
            found.append(Problem(config.source, f'routes[{index}] "{route.name}".upstream', reason))
    return found
