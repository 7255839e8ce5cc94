"""A route as configured (:class:`RouteSpec`), as compiled for matching (:class:`Route`),
and the compiled table of them (:class:`RouteTable`).

A match answers NONE (404), PARTIAL (405 + Allow) or FULL. Precedence, fixed at startup by
sorting: an exact host beats a wildcard host beats any host; then the longest literal path;
then a literal beats a template; then config order.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


def path_params(path: str) -> tuple[str, ...]:
    """The ``{name}`` parameters of a route path, in order."""
    return tuple(_PARAM.findall(path))


def parse_methods(raw: Iterable[object]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Method names as configured, upper-cased; and the indexes of those that are none."""
    methods = tuple(str(item).upper() for item in raw)
    return methods, tuple(i for i, method in enumerate(methods) if method not in ALL_METHODS)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """What one ``[[routes]]`` entry matches and where it sends it. ``path`` is a prefix on
    segment boundaries; a ``{name}`` segment matches exactly one non-empty segment. What the
    gateway does with the request besides (its policies) is the gateway's, not routing's."""

    name: str
    path: str
    upstream: str
    methods: frozenset[str] | None = None
    host: str | None = None
    strip_prefix: bool = False
    preserve_host: bool = False
    #: The matched prefix is replaced by this path upstream (Envoy's ``prefix_rewrite``):
    #: ``/v1/users`` sends ``/api/users/7`` on route ``/api/users`` as ``/v1/users/7``.
    prefix_rewrite: str | None = None

    @property
    def rewrites(self) -> bool:
        """The path sent upstream differs from the request's (strip or replace)."""
        return self.strip_prefix or self.prefix_rewrite is not None


def validate_path(path: str) -> str | None:
    """The reason ``path`` is not a valid route path, or None."""
    if not path.startswith("/"):
        return "must start with '/'"
    if "//" in path or "?" in path or "#" in path:
        return "must not contain '//', '?' or '#'"
    for segment in path.strip("/").split("/"):
        if "{" in segment or "}" in segment:
            if not _PARAM.fullmatch(segment):
                return f"segment {segment!r}: a template segment must be exactly '{{name}}'"
        elif segment in (".", ".."):
            return "must not contain '.' or '..' segments"
    names = path_params(path)
    if len(names) != len(set(names)):
        return "repeats a template parameter"
    return None


class Route:
    """A route compiled once at startup; matching does no parsing of the config."""

    __slots__ = (
        "_literal",
        "_literal_slash",
        "_prefix",
        "_regex",
        "host",
        "host_suffix",
        "methods",
        "name",
        "params",
        "segments",
        "sort_key",
        "spec",
    )

    def __init__(self, spec: RouteSpec, order: int) -> None:
        self.spec = spec
        self.name = spec.name
        #: What replaces the matched prefix: ``prefix_rewrite`` (no trailing "/"), or
        #: nothing (``strip_prefix``).
        self._prefix = (spec.prefix_rewrite or "").rstrip("/").encode("utf-8")
        self.methods = spec.methods
        path = spec.path.rstrip("/") or "/"
        host = spec.host.lower() if spec.host else None
        self.host_suffix: str | None = None
        if host and host.startswith("*."):
            self.host_suffix = host[1:]
            host = None
        self.host = host
        self.segments = 0 if path == "/" else path.count("/")
        self.params = path_params(path)
        if self.params:
            parts = []
            for segment in path.strip("/").split("/"):
                param = _PARAM.fullmatch(segment)
                parts.append(f"(?P<{param.group(1)}>[^/]+)" if param else re.escape(segment))
            pattern = "^/" + "/".join(parts) + "(?=/|$)"
            self._regex: re.Pattern[str] | None = re.compile(pattern)
            self._literal = ""
            self._literal_slash = ""
            literal_len = len(_PARAM.sub("", path))
        else:
            self._regex = None
            self._literal = path
            self._literal_slash = "/" if path == "/" else path + "/"
            literal_len = len(path)
        host_rank = 0 if self.host else (1 if self.host_suffix else 2)
        self.sort_key = (host_rank, -literal_len, bool(self.params), order)

    def match_host(self, host: str) -> bool:
        if self.host is not None:
            return host == self.host
        if self.host_suffix is not None:
            return host.endswith(self.host_suffix)
        return True

    def match_path(self, path: str) -> dict[str, str] | None:
        """Path parameters (empty for a literal route) when ``path`` is under this route."""
        regex = self._regex
        if regex is None:
            if path.startswith(self._literal_slash) or path == self._literal:
                return _NO_PARAMS
            return None
        found = regex.match(path)
        return found.groupdict() if found else None

    def rewrite(self, raw_path: bytes) -> bytes:
        """The raw path with this route's prefix removed (``strip_prefix``) or replaced by
        ``prefix_rewrite``; the rest of the path, percent-encoding and all, as sent."""
        index = 0
        rest = b""
        for _ in range(self.segments):
            index = raw_path.find(b"/", index + 1)
            if index < 0:
                break
        else:
            rest = raw_path[index:]
        return self._prefix + rest or b"/"


_NO_PARAMS: dict[str, str] = {}


# ---- the compiled route table --------------------------------------------------------------


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
