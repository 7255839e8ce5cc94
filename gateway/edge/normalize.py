"""Request-target normalisation before matching, so a route cannot be bypassed.

The gateway must choose a route from the same path the upstream will act on. A path that
needs no normalising (the common case, decided by three substring tests) is matched as
Hypercorn decoded it and forwarded byte-exact. Anything else takes the slow path here:

- absolute-form targets (``GET http://host/p``) become origin-form; the authority is only
  used as the Host for matching (RFC 9112 3.2.2), never to choose where to connect;
- other forms (``*``, authority-form) are refused (400);
- invalid percent-escapes and escaped control characters (``%00``, ``%0d`` ...) are refused;
- escaped slashes (``%2F``, ``%5C``) and raw backslashes are separators for matching
  (``keep``: Envoy's KEEP_UNCHANGED, but matched as an upstream that decodes them would)
  or refused (``reject``);
- ``.`` / ``..`` segments (also as ``%2e``) are resolved and empty segments merged
  (Envoy's ``normalize_path`` + ``merge_slashes``); ``..;x`` style segments (Tomcat path
  parameters on dot segments) are refused;
- ``;`` path parameters (``/admin;jsessionid=1``, also as ``%3B``) are not part of the path
  routes match (``path_parameters = "keep"``: Tomcat, Spring and Jetty serve ``/admin``
  for it, so the ``/admin`` route and its policies apply; forwarded as sent) or refused
  (``"reject"``); a segment of parameters alone (``/;x/admin``) is dropped.

When normalisation changed the path, the normalised path is what is forwarded (as Envoy
does), re-encoded, so the upstream acts on exactly the path the route was chosen for.

:class:`Normaliser` is the stage (gateway/pipeline/, gateway/websocket/handshake.py).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from gateway.asgi_types import Scope
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.edge.head import normalise_host

ESCAPED_SLASH_ACTIONS: Final = ("keep", "reject")
PATH_PARAMETER_ACTIONS: Final = ("keep", "reject")

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
#: What RFC 3986 allows unescaped in a path segment (pchar minus "%").
_SAFE: Final = "!$&'()*+,;=:@-._~"


def needs_normalizing(raw_path: bytes) -> bool:
    """The fast test: False for the common clean origin-form path."""
    return (
        raw_path[:1] != b"/"
        or b"%" in raw_path
        or b"//" in raw_path
        or b"/." in raw_path
        or b"\\" in raw_path
        or b";" in raw_path
    )


def split_absolute(raw_target: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, path)`` of an absolute-form target, or None when it is not one."""
    lower = raw_target[:8].lower()
    if lower.startswith(b"http://"):
        rest = raw_target[7:]
    elif lower.startswith(b"https://"):
        rest = raw_target[8:]
    else:
        return None
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    if not authority or b"@" in authority:
        raise GatewayError(400, "bad_request", "invalid authority in absolute-form target")
    return authority, path


def normalize_path(
    raw_path: bytes, escaped_slashes: str = "keep", path_parameters: str = "keep"
) -> tuple[str, bytes]:
    """``(match_path, forward_path)`` for an origin-form path; GatewayError(400) if hostile.

    ``match_path`` is decoded (UTF-8, like Hypercorn's ``scope["path"]``), has no dot or
    empty segments and no ``;`` parameters; ``forward_path`` is ``raw_path`` itself when
    nothing but parameters and escapes set them apart.
    """
    if raw_path[:1] != b"/":
        raise GatewayError(400, "bad_request", "request target must be an absolute path")
    reject_slashes = escaped_slashes == "reject"
    reject_parameters = path_parameters == "reject"
    matched: list[bytes] = []  # segments as routes see them: no parameters
    forward: list[bytes] = []  # the same segments as the upstream gets them: parameters kept
    changed = False
    raw_segments = raw_path[1:].split(b"/")
    last = len(raw_segments) - 1
    for index, raw in enumerate(raw_segments):
        decoded_raw = _unescape(raw) if b"%" in raw else raw
        if b"\\" in decoded_raw:
            decoded_raw = decoded_raw.replace(b"\\", b"/")  # as IIS and some routers read it
        pieces = decoded_raw.split(b"/")
        if len(pieces) > 1 and reject_slashes:
            raise GatewayError(400, "bad_request", "escaped slash or backslash in path")
        for number, segment in enumerate(pieces):
            final = index == last and number == len(pieces) - 1
            bare = segment
            if b";" in segment:
                if reject_parameters:
                    raise GatewayError(400, "bad_request", "path parameter (;) in path")
                # "/admin;jsessionid=1" is "/admin" to Tomcat, Spring and Jetty: the
                # route is chosen for the path they will serve.
                bare = segment[: segment.index(b";")]
                if bare == b"." or bare == b"..":
                    raise GatewayError(400, "bad_request", "dot segment with parameters")
                if not bare:
                    changed = True  # parameters alone (";x"): nothing to route or forward
                    segment = b""
            if bare == b"..":
                changed = True
                if matched:
                    matched.pop()
                    forward.pop()
                if final:
                    matched.append(b"")  # "/a/b/.." is "/a/", as RFC 3986 5.2.4
                    forward.append(b"")
            elif bare == b".":
                changed = True
                if final:
                    matched.append(b"")
                    forward.append(b"")
            elif not bare:
                if final:
                    matched.append(b"")  # the trailing slash is kept
                    forward.append(b"")
                else:
                    changed = True  # "//" merged
            else:
                matched.append(bare)
                forward.append(segment)
    if len(matched) == 1 and matched[0] == b"":
        matched = forward = []
    match = (b"/" + b"/".join(matched)).decode("utf-8", "replace")
    if not changed:
        return match, raw_path
    rebuilt = "/" + "/".join(quote(s, safe=_SAFE) for s in forward)
    return match, rebuilt.encode("ascii")


def _unescape(raw: bytes) -> bytes:
    """Percent-decode one segment; invalid escapes and control characters are refused.

    A decoded backslash becomes a slash: some upstreams (IIS, some routers) treat it so.
    """
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == 0x25:  # "%"
            if i + 3 > n:
                raise GatewayError(400, "bad_request", "invalid percent-escape in path")
            hi, lo = raw[i + 1], raw[i + 2]
            if hi not in _HEX or lo not in _HEX:
                raise GatewayError(400, "bad_request", "invalid percent-escape in path")
            value = int(raw[i + 1 : i + 3], 16)
            if value < 0x20 or value == 0x7F:
                raise GatewayError(400, "bad_request", "escaped control character in path")
            out.append(0x2F if value == 0x5C else value)
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def normalize_scope(
    scope: Scope, host: bytes, escaped_slashes: str, path_parameters: str = "keep"
) -> bytes:
    """Normalise ``scope``'s path in place (the slow path); returns the Host to match on.

    For an absolute-form target the authority becomes the Host (RFC 9112 3.2.2); the
    upstream is still chosen by the route table alone.
    """
    raw: bytes = scope["raw_path"]
    absolute = split_absolute(raw)
    if absolute is not None:
        authority, raw = absolute
        host = normalise_host(authority)
    match, forward = normalize_path(raw, escaped_slashes, path_parameters)
    scope["path"] = match
    scope["raw_path"] = forward
    return host


class Normaliser:
    """The normalisation stage, built once per snapshot (``[gateway] escaped_slashes``,
    ``path_parameters``)."""

    __slots__ = ("_escaped_slashes", "_path_parameters")

    def __init__(self, escaped_slashes: str, path_parameters: str = "keep") -> None:
        self._escaped_slashes = escaped_slashes
        self._path_parameters = path_parameters

    def normalise(self, ctx: RequestContext) -> None:
        """Normalise the path in place when it needs it; the Host may change with it."""
        scope = ctx.scope
        if needs_normalizing(scope["raw_path"]):
            ctx.host = normalize_scope(
                scope, ctx.host, self._escaped_slashes, self._path_parameters
            )
