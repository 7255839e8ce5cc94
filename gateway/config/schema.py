"""The config document, declared once: every top-level table, its type and its default.

Each table's settings are declared on the dataclass that owns them (see tables.py); the
modules beside this one add the checks a type cannot say. One pydantic pass over the whole
document reports every problem it finds, each at its key.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, TypeAdapter

from gateway.config.checks import header_name, one_of
from gateway.config.model import ENGINES, GatewaySettings, Network, ServerSettings
from gateway.config.observability_tables import ACCESS_LOG, ADMIN, METRICS, TRACING
from gateway.config.problems import Invalid
from gateway.config.route_tables import ROUTES
from gateway.config.shared_tables import CONSUMERS, JWT_PROVIDERS, REDIS
from gateway.config.tables import keys_table, table
from gateway.config.upstream_tables import UPSTREAMS, Upstreams
from gateway.edge.normalize import ESCAPED_SLASH_ACTIONS, PATH_PARAMETER_ACTIONS
from gateway.edge.traceparent import TRACE_MODES
from gateway.observability.sections import MetricsSettings


def _networks(raw: tuple[Any, ...]) -> tuple[Network, ...]:
    networks: list[Network] = []
    bad: list[tuple[tuple[str | int, ...], str]] = []
    for index, item in enumerate(raw):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            bad.append(((index,), f"{item!r} is not an IP or CIDR"))
    if bad:
        raise Invalid(*bad)
    return tuple(networks)


GATEWAY = table(
    GatewaySettings,
    fields={"trusted_proxies": Annotated[tuple[Any, ...], AfterValidator(_networks)]},
    checks={
        "request_id_header": header_name,
        "escaped_slashes": one_of(ESCAPED_SLASH_ACTIONS),
        "path_parameters": one_of(PATH_PARAMETER_ACTIONS),
        "traceparent": one_of(TRACE_MODES),
    },
)
SERVER = table(ServerSettings, checks={"engine": one_of(ENGINES)})

#: The whole file. Validates to a dict of the tables' values, by key.
DOCUMENT: TypeAdapter[dict[str, Any]] = TypeAdapter(
    keys_table(
        "GatewayDocument",
        {
            "gateway": (GATEWAY, GatewaySettings()),
            "upstreams": (UPSTREAMS, Upstreams()),
            "routes": (ROUTES, ()),
            "admin": (ADMIN | None, None),
            "metrics": (METRICS, MetricsSettings()),
            "access_log": (ACCESS_LOG | None, None),
            "tracing": (TRACING | None, None),
            "server": (SERVER, ServerSettings()),
            "consumers": (CONSUMERS, {}),
            "jwt_providers": (JWT_PROVIDERS, {}),
            "redis": (REDIS | None, None),
        },
    )
)
