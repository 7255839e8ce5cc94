"""Where a request goes: the route model, the compiled table, matching and rewrites."""

from __future__ import annotations

from routes.matching import Match, MatchKind, RouteTable
from routes.model import Route, RouteSpec

__all__ = ["Match", "MatchKind", "Route", "RouteSpec", "RouteTable"]
