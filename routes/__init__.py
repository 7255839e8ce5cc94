"""Where a request goes: the route model, the compiled table, matching and rewrites."""

from __future__ import annotations

from routes.model import Match, MatchKind, Route, RouteSpec, RouteTable

__all__ = ["Match", "MatchKind", "Route", "RouteSpec", "RouteTable"]
