"""RFC 9111 for a shared (reverse-proxy) cache: what may be stored, for how long it is
fresh, how old it is, and which stored response answers which request. Pure functions of
header lists and clock readings (``time.time()`` seconds); nothing here does I/O.

The rules, section by section:

- **Storing (§3)**: GET only; a final status that is not 206 (partial content is never
  stored, and a request with ``Range`` bypasses the cache); no ``no-store`` on either side;
  no ``private`` (this is a shared cache); no ``Vary: *``; with ``Authorization`` only when
  the response says ``public``, ``s-maxage`` or ``must-revalidate`` (§3.5); a status not
  cacheable by default only with explicit freshness; and something to serve it by: a
  freshness lifetime or a validator. A response with ``Set-Cookie`` is not stored: one
  user's cookie must never reach another (Varnish's default, stricter than the RFC).
- **Freshness (§4.2.1)**: ``s-maxage``, else ``max-age``, else ``Expires`` minus ``Date``;
  an invalid ``Expires`` means already expired. No heuristic freshness unless the route
  asks for it (a fraction of the time since ``Last-Modified``, §4.2.2).
- **Age (§4.2.3)**: corrected for the upstream's ``Age`` and the response delay, plus the
  time since the response was received; an ``Age`` that is not one integer makes the
  response stale.
- **Request directives (§5.2.1)**: ``max-age``, ``min-fresh``, ``max-stale``, ``no-cache``
  (and ``Pragma: no-cache`` without Cache-Control), ``only-if-cached``; ``no-store``
  bypasses the cache.
- **Vary (§4.1)**: a stored response answers a request whose values of the named headers
  match the stored request's, after whitespace is normalised.
- **must-understand (§5.2.2.3)**: overrides ``no-store`` for a status whose rules are
  known; a response with another status is not stored.
- **Validation (§4.3)**: ``ETag`` compared weakly, ``Last-Modified`` against
  ``If-Modified-Since``; a 304 updates the stored headers, all but :data:`NOT_UPDATED`.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from typing import Final

Headers = list[tuple[bytes, bytes]]
Directives = dict[str, str | None]

#: Statuses a cache may store without explicit freshness (RFC 9110 15.1), 206 excepted.
CACHEABLE_BY_DEFAULT: Final = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
#: Headers a 304 does not update: the stored body's framing and identity stay its own
#: (§3.2; the cache-tests suite's list), and a 304's Set-Cookie is its client's, never
#: stored for the next one.
NOT_UPDATED: Final = frozenset(
    {
        b"content-length", b"content-encoding", b"transfer-encoding", b"content-range",
        b"content-md5", b"etag", b"set-cookie",
    }
)  # fmt: skip
#: Statuses whose caching rules this cache implements, beyond the cacheable ones.
UNDERSTOOD: Final = frozenset({302, 303, 307, 400, 401, 403, 500, 502, 503, 504})
MAX_DELTA: Final = 2**31  # §1.2.2: a delta beyond it is taken as this


def header(headers: Headers, name: bytes) -> bytes | None:
    """The values of ``name``, joined with ``, `` when it appears more than once."""
    found = [value for key, value in headers if key == name]
    if not found:
        return None
    return b", ".join(found)


def directives(value: bytes | None) -> Directives:
    """``Cache-Control`` as ``{directive: argument or None}``; names lower-cased, quoted
    arguments unquoted; the first of a repeated directive wins."""
    found: Directives = {}
    if not value:
        return found
    for part in _split(value.decode("latin-1")):
        name, sep, argument = part.partition("=")
        name = name.strip().lower()
        if not name or name in found:
            continue
        argument = argument.strip()
        if argument.startswith('"') and argument.endswith('"') and len(argument) >= 2:
            argument = argument[1:-1]
        found[name] = argument if sep else None
    return found


def _split(text: str) -> Iterable[str]:
    """Comma-separated parts, commas inside quoted strings kept."""
    part, quoted = "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            yield part
            part = ""
        else:
            part += char
    yield part


def delta(value: str | None) -> int | None:
    """A delta-seconds argument, or None when absent or not a non-negative integer."""
    if value is None or not value.isdigit():
        return None
    return min(int(value), MAX_DELTA)


def http_date(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def request_directives(headers: Headers) -> Directives:
    found = directives(header(headers, b"cache-control"))
    if b"cache-control" not in {k for k, _ in headers}:
        pragma = header(headers, b"pragma")
        if pragma and b"no-cache" in pragma.lower():
            found["no-cache"] = None
    return found


def storable(
    status: int,
    request: Headers,
    response: Headers,
    response_cc: Directives,
    *,
    heuristic: bool,
) -> str | None:
    """Why the response to a GET may not be stored, or None when it may."""
    if status < 200 or status in (206, 304):
        return "partial, interim or not-modified response"
    if "must-understand" in response_cc:  # §5.2.2.3: only statuses it knows the rules of
        if status not in CACHEABLE_BY_DEFAULT | UNDERSTOOD:
            return f"must-understand and status {status}"
    elif "no-store" in response_cc:
        return "no-store"
    if "no-store" in request_directives(request):
        return "no-store"
    if "private" in response_cc:
        return "private"
    vary = header(response, b"vary")
    if vary is not None and b"*" in [v.strip() for v in vary.split(b",")]:
        return "Vary: *"
    if header(response, b"set-cookie") is not None:
        return "Set-Cookie"
    if header(request, b"authorization") is not None and not (
        {"public", "s-maxage", "must-revalidate"} & response_cc.keys()
    ):
        return "Authorization without public, s-maxage or must-revalidate"
    explicit = bool({"s-maxage", "max-age", "public"} & response_cc.keys()) or (
        header(response, b"expires") is not None
    )
    if status not in CACHEABLE_BY_DEFAULT and not explicit:
        return f"status {status} without explicit freshness"
    validator = header(response, b"etag") or header(response, b"last-modified")
    if not explicit and not validator and not heuristic:
        return "no freshness and no validator"
    return None


def freshness_lifetime(
    response: Headers, cc: Directives, response_time: float, *, heuristic: bool
) -> float:
    """Seconds the response is fresh for, from when it was generated (§4.2.1)."""
    for name in ("s-maxage", "max-age"):
        if name in cc:
            seconds = delta(cc[name])
            return float(seconds) if seconds is not None else 0.0
    expires = header(response, b"expires")
    if expires is not None:
        moment = http_date(expires)
        if moment is None:
            return 0.0  # an invalid Expires: already expired (§5.3)
        date = http_date(header(response, b"date")) or response_time
        return max(0.0, moment - date)
    if heuristic:
        modified = http_date(header(response, b"last-modified"))
        date = http_date(header(response, b"date")) or response_time
        if modified is not None and modified < date:
            return (date - modified) / 10  # §4.2.2's "10% of the time since"
    return 0.0


def initial_age(response: Headers, request_time: float, response_time: float) -> float:
    """The response's age when it was received (§4.2.3). An ``Age`` that is not one line of
    digits (``abc``, ``-1``, ``1.0``, ``1, 2``, two lines, ``1;x=y``) makes the response
    stale: how old it is cannot be known."""
    date = http_date(header(response, b"date"))
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    ages = [value.strip() for name, value in response if name == b"age"]
    if len(ages) > 1 or (ages and not ages[0].isdigit()):
        return float("inf")
    age = min(int(ages[0]), MAX_DELTA) if ages else 0
    corrected = age + (response_time - request_time)
    return max(apparent, corrected)


def vary_names(response: Headers) -> tuple[bytes, ...]:
    vary = header(response, b"vary")
    if not vary:
        return ()
    return tuple(sorted({v.strip().lower() for v in vary.split(b",") if v.strip()}))


def normalised(headers: Headers, name: bytes) -> bytes | None:
    """A request header's value as Vary compares it: its lines joined, spaces around
    commas and at the ends removed."""
    value = header(headers, name)
    if value is None:
        return None
    return b",".join(part.strip() for part in value.split(b","))


def vary_key(request: Headers, names: tuple[bytes, ...]) -> tuple[bytes | None, ...]:
    return tuple(normalised(request, name) for name in names)


def weak_match(tags: bytes, etag: bytes | None) -> bool:
    """``If-None-Match`` against a stored ``ETag`` (weak comparison, §13.1.2 of RFC 9110)."""
    if etag is None:
        return False
    if tags.strip() == b"*":
        return True
    mine = etag.strip().removeprefix(b"W/")
    return any(tag.strip().removeprefix(b"W/") == mine for tag in tags.split(b","))


def updated(stored: Headers, fresh: Headers) -> Headers:
    """The stored headers with a 304's headers replacing theirs (§4.3.4)."""
    names = {name for name, _ in fresh if name not in NOT_UPDATED}
    kept = [(n, v) for n, v in stored if n not in names]
    return kept + [(n, v) for n, v in fresh if n in names]
