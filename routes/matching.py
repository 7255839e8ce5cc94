"""The compiled route table. A match answers NONE (404), PARTIAL (405 + Allow) or FULL.

Precedence, fixed at startup by sorting: an exact host beats a wildcard host beats any host;
then the longest literal path; then a literal beats a template; then config order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from routes.model import Route, RouteSpec


class MatchKind(enum.Enum):
    NONE = 0
    PARTIAL = 1
    FULL = 2


@dataclass(frozen=True, slots=True)
class Match:
    kind: MatchKind
    route: Route | None = None
    params: dict[str, str] | None = None
    allow: frozenset[str] = frozenset()


NO_MATCH = Match(MatchKind.NONE)


class RouteTable:
    def __init__(self, specs: Iterable[RouteSpec]) -> None:
        routes = [Route(spec, order) for order, spec in enumerate(specs)]
        routes.sort(key=lambda r: r.sort_key)
        self.routes: tuple[Route, ...] = tuple(routes)

    def match(self, host: str, path: str, method: str) -> Match:
        """``host`` is lower-case without port; ``path`` is the decoded, normalised path."""
        allow: set[str] | None = None
        for route in self.routes:
            if not route.match_host(host):
                continue
            params = route.match_path(path)
            if params is None:
                continue
            methods = route.methods
            if methods is None or method in methods:
                return Match(MatchKind.FULL, route, params)
            if allow is None:
                allow = set(methods)
            else:
                allow |= methods
        if allow is None:
            return NO_MATCH
        return Match(MatchKind.PARTIAL, allow=frozenset(allow))
