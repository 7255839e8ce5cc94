"""Request-target normalisation, client identity and trace context: pure logic, properties."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge.errors import GatewayError
from gateway.edge.forwarding import parse_forwarded, resolve, untrusted_headers
from gateway.edge.headers import TrustedProxies
from gateway.edge.identity import next_hop
from gateway.edge.normalize import normalize_path, split_absolute
from routes.model import MatchKind, RouteSpec, RouteTable

# ---- normalisation: examples ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match", "forward"),
    [
        (b"/a/../b", "/b", b"/b"),
        (b"//b", "/b", b"/b"),
        (b"/a//b/", "/a/b/", b"/a/b/"),
        (b"/a/%2e%2e/b", "/b", b"/b"),
        (b"/a/%2E./b", "/b", b"/b"),
        (b"/a/./b/.", "/a/b/", b"/a/b/"),
        (b"/../../etc", "/etc", b"/etc"),
        (b"/api/..%2Fadmin", "/admin", b"/admin"),
        (b"/api/..%5Cadmin", "/admin", b"/admin"),
        (b"/raw/a%2Fb%20c/%7Euser;p=1", "/raw/a/b c/~user", b"/raw/a%2Fb%20c/%7Euser;p=1"),
        # ";" parameters are not part of the path a route matches (Tomcat, Spring, Jetty)
        (b"/admin;x", "/admin", b"/admin;x"),
        (b"/admin;jsessionid=1/page", "/admin/page", b"/admin;jsessionid=1/page"),
        (b"/admin%3bx", "/admin", b"/admin%3bx"),
        (b"/;/admin", "/admin", b"/admin"),
        (b"/;x=1/admin;y", "/admin", b"/admin;y"),
        (b"/admin/;x", "/admin/", b"/admin/"),
        (b"/items/5;v=2", "/items/5", b"/items/5;v=2"),
        (b"//admin;x", "/admin", b"/admin;x"),
        (b"/x/%C3%A9", "/x/\u00e9", b"/x/%C3%A9"),
        (b"/a\\b", "/a/b", b"/a\\b"),
        (b"/public\\..\\admin", "/admin", b"/admin"),
        (b"/a.b/c..d/.e", "/a.b/c..d/.e", b"/a.b/c..d/.e"),
    ],
)
def test_normalize_examples(raw: bytes, match: str, forward: bytes) -> None:
    assert normalize_path(raw) == (match, forward)


@pytest.mark.parametrize(
    "raw",
    [
        b"/a%00b",
        b"/a%0d%0aSet-Cookie:x",
        b"/a%zz",
        b"/a%2",
        b"/public/..;/admin",
        b"/public/.;x/admin",
        b"/public/%2e%2e%3b/admin",
        b"*",
        b"x",
    ],
)
def test_normalize_refuses_hostile(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        normalize_path(raw)
    assert caught.value.status == 400


def test_escaped_slash_reject_mode() -> None:
    with pytest.raises(GatewayError):
        normalize_path(b"/api/a%2Fb", "reject")
    with pytest.raises(GatewayError):
        normalize_path(b"/api/a\\b", "reject")
    assert normalize_path(b"/api/a-b", "reject") == ("/api/a-b", b"/api/a-b")


@pytest.mark.parametrize("raw", [b"/admin;x", b"/admin%3Bx", b"/;/admin", b"/a/b;c=d"])
def test_path_parameters_reject_mode(raw: bytes) -> None:
    with pytest.raises(GatewayError) as caught:
        normalize_path(raw, "keep", "reject")
    assert caught.value.status == 400
    assert caught.value.detail == "path parameter (;) in path"


def test_absolute_form_split() -> None:
    assert split_absolute(b"http://evil.example:81/admin") == (b"evil.example:81", b"/admin")
    assert split_absolute(b"HTTPS://h") == (b"h", b"/")
    assert split_absolute(b"/plain") is None
    with pytest.raises(GatewayError):
        split_absolute(b"http://user@h/x")


# ---- normalisation: properties -------------------------------------------------------------

SEGMENTS = st.sampled_from(
    ["a", "b", "api", "admin", ".", "..", "%2e", "%2E%2e", ".%2e", "", "%2F", "%5C",
     "..%2F", "%2F..", "x%2Fy", "%41", "~", "a.b", "%20", "a\\b", "..\\", "\\..",
     ";", ";x", "admin;x", "api;jsessionid=1", "%3b", "admin%3Bx", "..;", "a;b=c"]
)  # fmt: skip


ROUTES = (("api", "/api"), ("admin", "/admin"), ("root", "/"))


def upstream_view(forward: bytes) -> str:
    """How a Java upstream (Tomcat, Spring) reads a path: ``;`` parameters off each raw
    segment, then decode (also %2F and %5C), resolve dots."""
    raw = "/".join(s.partition(";")[0] for s in forward.decode("ascii").split("/"))
    text = unquote(raw).replace("\\", "/")
    out: list[str] = []
    for segment in text.split("/")[1:]:
        segment = segment.partition(";")[0]  # an escaped ";" is one to a lenient reader
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    return "/" + "/".join(out)


@settings(max_examples=400, deadline=None)
@given(st.lists(SEGMENTS, max_size=8))
def test_no_path_escapes_its_route_prefix(segments: list[str]) -> None:
    """Whatever the gateway matched, the upstream acts on a path under that route."""
    raw = ("/api/" + "/".join(segments)).encode("ascii")
    try:
        match, forward = normalize_path(raw)
    except GatewayError:
        return  # refused: nothing reached a route
    table = RouteTable([RouteSpec(n, p, "u") for n, p in ROUTES])
    found = table.match("", match, "GET")
    assert found.kind is MatchKind.FULL and found.route is not None
    seen = upstream_view(forward)
    assert "/../" not in match + "/" and "//" not in match
    # The route the gateway chose is the route the upstream's view of the path selects.
    assert table.match("", seen, "GET").route is found.route
    if found.route.name == "api":
        assert seen == "/api" or seen.startswith("/api/")


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENTS, max_size=8))
def test_normalisation_is_idempotent(segments: list[str]) -> None:
    raw = ("/" + "/".join(segments)).encode("ascii")
    try:
        match, forward = normalize_path(raw)
    except GatewayError:
        return
    assert normalize_path(forward)[0] == match


# ---- forwarding ---------------------------------------------------------------------------

TRUSTED = TrustedProxies([__import__("ipaddress").ip_network("10.0.0.0/8")])


def headers_of(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_client_is_rightmost_untrusted_hop() -> None:
    found = resolve(
        headers_of(("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")),
        "10.0.0.1",
        "http",
        b"h",
        TRUSTED,
    )
    assert found.client_ip == "1.2.3.4"
    assert dict(found.headers)[b"x-forwarded-for"] == b"6.6.6.6, 1.2.3.4, 10.0.0.7, 10.0.0.1"


def test_forwarded_rfc7239_used_without_xff() -> None:
    value = 'for=192.0.2.60;proto=https;host=api.example.com, for="[2001:db8::1]:4711"'
    found = resolve(headers_of(("forwarded", value)), "10.0.0.1", "http", b"h", TRUSTED)
    assert found.client_ip == "2001:db8::1"
    out = dict(found.headers)
    assert out[b"forwarded"].endswith(b", for=10.0.0.1;proto=http;host=h")
    assert parse_forwarded(value.encode())[0] == {
        "for": "192.0.2.60",
        "proto": "https",
        "host": "api.example.com",
    }


def test_garbage_hop_stops_the_walk() -> None:
    found = resolve(
        headers_of(("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.9")),
        "10.0.0.1",
        "http",
        b"h",
        TRUSTED,
    )
    assert found.client_ip == "10.0.0.9"


def test_untrusted_peer_headers_are_what_the_gateway_saw() -> None:
    assert untrusted_headers("5.5.5.5", "http", b"h") == (
        (b"x-forwarded-for", b"5.5.5.5"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"h"),
    )


# ---- trace context ------------------------------------------------------------------------

PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_traceparent_keeps_trace_and_flags_with_new_span() -> None:
    out, keep = next_hop(PARENT, "propagate")
    assert out is not None and keep
    assert out[:36] == PARENT[:36] and out[-3:] == b"-01"
    assert out[36:52] != PARENT[36:52]


@pytest.mark.parametrize(
    "bad",
    [
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        b"garbage",
    ],
)
def test_invalid_traceparent_is_dropped_or_restarted(bad: bytes) -> None:
    assert next_hop(bad, "propagate") == (None, False)
    fresh, keep = next_hop(bad, "start")
    assert fresh is not None and not keep and fresh[3:35] != bad[3:35]
