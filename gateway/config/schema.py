"""The config document, declared once: every top-level table, its type and its default.

Each table's settings are declared on the dataclass that owns them (see tables.py); the
modules beside this one add the checks a type cannot say. One pydantic pass over the whole
document reports every problem it finds, each at its key.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, TypeAdapter

from gateway.cache.settings import STORES, CacheStoreSettings
from gateway.config.checks import header_name, one_of
from gateway.config.model import ENGINES, GatewayConfig, GatewaySettings, Network, ServerSettings
from gateway.config.observability_tables import ACCESS_LOG, ADMIN, LOGGING, METRICS, TRACING
from gateway.config.problems import Invalid
from gateway.config.route_tables import ROUTES
from gateway.config.shared_tables import CONSUMERS, JWT_PROVIDERS, REDIS
from gateway.config.tables import fields_of, keys_table, table
from gateway.config.upstream_tables import UPSTREAMS, Upstreams
from gateway.edge.identity import TRACE_MODES
from gateway.edge.normalize import ESCAPED_SLASH_ACTIONS, PATH_PARAMETER_ACTIONS
from gateway.observability.sections import ObservabilitySettings
from gateway.policies.shared import SharedSettings


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


def _via(value: str) -> str:
    """``via``: a received-by name (RFC 9110 7.6.3): visible ASCII, no comma."""
    if value and (re.fullmatch(r"[!-~]+", value) is None or "," in value):
        raise Invalid.at("must be a name of visible ASCII characters, without a comma")
    return value


GATEWAY = table(
    GatewaySettings,
    fields={"trusted_proxies": Annotated[tuple[Any, ...], AfterValidator(_networks)]},
    checks={
        "request_id_header": header_name,
        "escaped_slashes": one_of(ESCAPED_SLASH_ACTIONS),
        "path_parameters": one_of(PATH_PARAMETER_ACTIONS),
        "traceparent": one_of(TRACE_MODES),
        "via": _via,
    },
)
SERVER = table(ServerSettings, checks={"engine": one_of(ENGINES)})

#: ``GatewayConfig``'s fields that are no top-level table: from the file's name and bytes,
#: or from another table (``[[routes]]`` and ``[upstreams]`` hold two fields each).
DERIVED = ("source", "version", "upstreams", "app_upstreams", "routes", "route_policies")
#: Fields grouped on ``GatewayConfig`` whose tables are top-level in the file.
GROUPS = {"observability": ObservabilitySettings, "shared": SharedSettings}

_TOP = fields_of(
    GatewayConfig, exclude=(*DERIVED, *GROUPS), fields={"gateway": GATEWAY, "server": SERVER}
)

#: The whole file. Validates to a dict of the tables' values, by key (in the order problems
#: are reported); each key, type and default comes from the dataclass field it fills, and
#: loader.py builds those by name.
DOCUMENT: TypeAdapter[dict[str, Any]] = TypeAdapter(
    keys_table(
        "GatewayDocument",
        {
            "gateway": _TOP.pop("gateway"),
            "upstreams": (UPSTREAMS, Upstreams()),
            "routes": (ROUTES, ()),
            **fields_of(
                ObservabilitySettings,
                fields={
                    "logging": LOGGING,
                    "admin": ADMIN | None,
                    "metrics": METRICS,
                    "access_log": ACCESS_LOG | None,
                    "tracing": TRACING | None,
                },
            ),
            **_TOP,  # [server]
            **fields_of(
                SharedSettings,
                fields={
                    "consumers": CONSUMERS,
                    "jwt_providers": JWT_PROVIDERS,
                    "redis": REDIS | None,
                    "cache": table(CacheStoreSettings, checks={"store": one_of(STORES)}),
                },
            ),
        },
    )
)
