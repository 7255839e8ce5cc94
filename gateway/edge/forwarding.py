"""Client identity behind reverse proxies: X-Forwarded-* and Forwarded (RFC 7239).

Only a peer inside ``[gateway] trusted_proxies`` is believed. For such a peer the client is
the right-most hop of ``X-Forwarded-For`` (or, when that header is absent, of the
``for=`` parameters of ``Forwarded``) that is not itself a trusted proxy; the chain is
passed on with the peer appended, and ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` are
believed, and so is ``X-Forwarded-Port``. For any other peer every incoming forwarding
header (``X-Forwarded-Port`` included) is dropped and replaced by what the gateway saw
(``X-Forwarded-For: <peer>``): never appended to blindly. ``[gateway] x_forwarded_port``
adds the port the client connected to when no trusted proxy said one.

``X-Forwarded-For`` wins over ``Forwarded`` because nginx's ``$proxy_add_x_forwarded_for``
rewrites the former but passes a client-sent ``Forwarded`` through untouched.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from gateway.asgi_types import Scope
from gateway.edge.headers import REQUEST_DROP, TrustedProxies

#: Request headers never copied upstream as they came: the gateway sets them itself.
FORWARD_DROP: Final = REQUEST_DROP | {b"forwarded", b"traceparent"}

#: At most this many hops are examined (a 16 KiB header could list thousands).
MAX_HOPS: Final = 64

_HOST = re.compile(rb"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What a trusted peer told us, and the headers to send on."""

    client_ip: str
    headers: tuple[tuple[bytes, bytes], ...]


def untrusted_headers(
    peer: str, scheme: str, host: bytes, port: bytes = b""
) -> tuple[tuple[bytes, bytes], ...]:
    """The forwarding headers for a peer that is not trusted: what the gateway saw.
    ``port``: the port the client connected to, sent as ``X-Forwarded-Port`` when given
    (``[gateway] x_forwarded_port``)."""
    proto = b"https" if scheme == "https" else b"http"
    out = [(b"x-forwarded-for", peer.encode("ascii")), (b"x-forwarded-proto", proto)]
    if host:
        out.append((b"x-forwarded-host", host))
    if port:
        out.append((b"x-forwarded-port", port))
    return tuple(out)


def server_port(scope: Scope) -> bytes:
    """The port the client connected to, as a header value (b"" on a unix socket)."""
    server = scope.get("server")
    if isinstance(server, tuple | list) and len(server) == 2 and server[1] is not None:
        return str(server[1]).encode("ascii")
    return b""


def resolve(
    headers: list[tuple[bytes, bytes]],
    peer: str,
    scheme: str,
    host: bytes,
    trusted: TrustedProxies,
    port: bytes = b"",
) -> Forwarding:
    """Client identity and onward headers for a request from a trusted ``peer``. Its
    ``X-Forwarded-Port`` is believed and passed on; without one, ``port`` is sent when
    given (``[gateway] x_forwarded_port``)."""
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    proto: bytes | None = None
    fhost: bytes | None = None
    fport: bytes | None = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"forwarded":
            forwarded.append(value)
        elif name == b"x-forwarded-proto":
            token = value.split(b",", 1)[0].strip().lower()
            if token in (b"http", b"https"):
                proto = token
        elif name == b"x-forwarded-host":
            token = value.split(b",", 1)[0].strip()
            if _HOST.fullmatch(token):
                fhost = token
        elif name == b"x-forwarded-port":
            token = value.split(b",", 1)[0].strip()
            if token.isdigit() and 0 < len(token) <= 5:
                fport = token
    elements = parse_forwarded(b", ".join(forwarded)) if forwarded else []
    if xff:
        hops = [h.strip().decode("latin-1") for h in b",".join(xff).split(b",")]
        hops = [h for h in hops if h]
    else:
        hops = [e.get("for", "") for e in elements]
        if elements and proto is None and elements[-1].get("proto") in ("http", "https"):
            proto = elements[-1]["proto"].encode("ascii")
        last_host = elements[-1].get("host", "").encode("latin-1") if elements else b""
        if fhost is None and last_host and _HOST.fullmatch(last_host):
            fhost = last_host
    client = peer
    for hop in reversed(hops[-MAX_HOPS:]):
        ip = _address(hop)
        if ip is None:
            break  # garbage from a trusted hop: keep the last address we could read
        client = ip
        if not trusted.trusts(ip):
            break
    scheme_b = b"https" if scheme == "https" else b"http"
    chain = ", ".join([*hops, peer]).encode("latin-1")
    out: list[tuple[bytes, bytes]] = [
        (b"x-forwarded-for", chain),
        (b"x-forwarded-proto", proto or scheme_b),
    ]
    if fhost or host:
        out.append((b"x-forwarded-host", fhost or host))
    if fport or port:
        out.append((b"x-forwarded-port", fport or port))
    if forwarded:
        mine = b"for=" + _node(peer) + b";proto=" + scheme_b
        if host and _HOST.fullmatch(host):
            mine += b";host=" + host
        out.append((b"forwarded", b", ".join(forwarded) + b", " + mine))
    return Forwarding(client, tuple(out))


def parse_forwarded(value: bytes) -> list[dict[str, str]]:
    """RFC 7239 elements as dicts of lower-case parameter -> unquoted value."""
    text = value.decode("latin-1")
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n and len(elements) <= MAX_HOPS:
        while i < n and text[i] in " \t":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip().lower()
        i = eq + 1
        if i < n and text[i] == '"':
            j = i + 1
            chars: list[str] = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            val = "".join(chars)
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in ";,":
                j += 1
            val = text[i:j].strip()
            i = j
        if key:
            current[key] = val
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == ",":
            elements.append(current)
            current = {}
        i += 1
    if current:
        elements.append(current)
    return elements


def _address(hop: str) -> str | None:
    """The IP in a hop (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), or None."""
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1 : hop.find("]")] if "]" in hop else ""
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _node(peer: str) -> bytes:
    if ":" in peer:
        return b'"[' + peer.encode("ascii") + b']"'
    return peer.encode("ascii")
