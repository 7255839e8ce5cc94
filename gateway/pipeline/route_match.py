"""The route-match stage: the request's route and what serves it, or 404 / 405."""

from __future__ import annotations

from typing import Final

from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.edge.headers import match_host
from gateway.state import RouteRuntime
from routes.model import MatchKind, RouteTable

#: Distinct Host values remembered per snapshot; a client sending endless new ones only
#: empties the cache, it never grows past this.
HOSTS_CACHED: Final = 1024


class RouteMatch:
    """Built once per snapshot from its route table."""

    __slots__ = ("_hosts", "_runtimes", "_table")

    def __init__(self, table: RouteTable, runtimes: dict[str, RouteRuntime]) -> None:
        self._table = table
        self._runtimes = runtimes
        #: Host header -> the host the table matches on: clients send the same few Hosts,
        #: so the common request pays a dict lookup, not a decode, lower and split.
        self._hosts: dict[bytes, str] = {}

    def match(self, ctx: RequestContext) -> RouteRuntime:
        """Set ``ctx.route`` and ``ctx.params``; a path that matches with another method
        is 405 with ``Allow``, anything else unmatched 404."""
        scope = ctx.scope
        host = self._hosts.get(ctx.host)
        if host is None:
            host = self._remember(ctx.host)
        match = self._table.match(host, scope["path"], scope["method"])
        if match.kind is not MatchKind.FULL:
            if match.kind is MatchKind.PARTIAL:
                allow = ", ".join(sorted(match.allow)).encode("ascii")
                raise GatewayError(
                    405,
                    "method_not_allowed",
                    f"method {scope['method']} is not allowed on this route",
                    [(b"allow", allow)],
                )
            raise GatewayError(404, "route_not_found", f"no route for {scope['path']}")
        route = match.route
        assert route is not None
        ctx.route = route
        ctx.params = match.params or {}
        return self._runtimes[route.name]

    def _remember(self, host: bytes) -> str:
        hosts = self._hosts
        if len(hosts) >= HOSTS_CACHED:
            hosts.clear()
        matched = hosts[host] = match_host(host)
        return matched
