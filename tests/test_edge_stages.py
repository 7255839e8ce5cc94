"""The edge stages alone, on plain scopes (no server, no app): the header scan, the edge
checks in their two wordings, normalisation and identity. End-to-end proofs of the same
rules are in test_hostile_input.py, test_protocol_client.py and test_websocket_*.py."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import pytest

from gateway.edge.checks import EdgeChecks
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.edge.head import RequestHead
from gateway.edge.headers import TrustedProxies
from gateway.edge.identity import Identity
from gateway.edge.normalize import Normaliser, needs_normalizing
from tests.support.asgi_scope import http_scope

ID = b"x-request-id"
PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def scope_of(
    headers: list[tuple[bytes, bytes]],
    *,
    method: str = "GET",
    raw_path: bytes = b"/api/x",
    http_version: str = "1.1",
    client: str = "192.0.2.10",
) -> dict[str, Any]:
    return http_scope(
        raw_path, method=method, headers=headers, client=(client, 40000), http_version=http_version
    )


def context(scope: dict[str, Any]) -> tuple[RequestHead, RequestContext]:
    head = RequestHead(scope["headers"], ID)
    return head, RequestContext(scope, head.request_id, head.host, 0.0)


# -- the header scan -----------------------------------------------------------------------


def test_the_scan_reads_every_header_the_later_stages_need() -> None:
    headers = [
        (b"host", b"gw.example"),
        (ID, b"client-id-1"),
        (b"content-length", b"5"),
        (b"connection", b"keep-alive, x-hop"),
        (b"traceparent", PARENT),
        (b"accept", b"*/*"),
    ]
    head = RequestHead(headers, ID)
    assert head.host == b"gw.example"
    assert head.request_id == b"client-id-1"
    assert head.content_length == b"5"
    assert head.transfer_encoding is None
    assert head.connection == b"keep-alive, x-hop"
    assert head.traceparent == PARENT
    assert not head.control_character and head.duplicate is None
    assert head.size == sum(len(n) + len(v) for n, v in headers)


@pytest.mark.parametrize("sent", [None, b"", b"has space", b"x" * 201, b"caf\xc3\xa9"])
def test_a_missing_or_insane_request_id_is_replaced_by_a_uuid4(sent: bytes | None) -> None:
    headers = [(b"host", b"gw")] + ([(ID, sent)] if sent is not None else [])
    request_id = RequestHead(headers, ID).request_id
    assert request_id != sent
    assert uuid.UUID(request_id.decode("ascii")).version == 4


def test_the_request_id_header_name_is_the_configured_one() -> None:
    head = RequestHead([(b"x-correlation-id", b"abc"), (ID, b"other")], b"x-correlation-id")
    assert head.request_id == b"abc"


@pytest.mark.parametrize(
    ("values", "seen"),
    [
        ([b"5", b"5"], b"5"),  # the same value twice is one length (RFC 9110 8.6)
        ([b"5", b"6"], b"conflict"),
        ([b"5", b"6", b"5"], b"conflict"),
    ],
)
def test_repeated_content_lengths(values: list[bytes], seen: bytes) -> None:
    head = RequestHead([(b"content-length", v) for v in values], ID)
    assert head.content_length == seen


def test_transfer_encoding_twice_is_a_conflict() -> None:
    head = RequestHead([(b"transfer-encoding", b"chunked")] * 2, ID)
    assert head.transfer_encoding == b"conflict"


@pytest.mark.parametrize(
    "hosts",
    [
        [b"a", b"b"],
        [b"a", b"a"],
        [b"", b"a"],  # an empty first Host is a Host too: exactly one is allowed
    ],
)
def test_more_than_one_host_is_seen(hosts: list[bytes]) -> None:
    head = RequestHead([(b"host", h) for h in hosts], ID)
    assert head.duplicate == b"host"
    assert head.host == hosts[-1]


def test_no_host_is_an_empty_host() -> None:
    head = RequestHead([(b"accept", b"*/*")], ID)
    assert head.host == b"" and head.duplicate is None


def test_two_authorization_headers_are_seen_one_is_not() -> None:
    twice = [(b"authorization", b"Bearer garbage"), (b"authorization", b"Bearer good")]
    assert RequestHead(twice, ID).duplicate == b"authorization"
    assert RequestHead(twice[1:], ID).duplicate is None


@pytest.mark.parametrize(
    ("sent", "seen"),
    [
        (b"admin.test ", b"admin.test"),
        (b"admin.test\t", b"admin.test"),
        (b" \tadmin.test \t ", b"admin.test"),
        (b"admin.test.", b"admin.test"),
        (b"admin.test.:8080", b"admin.test:8080"),
        (b"admin.test. ", b"admin.test"),
        (b"[::1]:8080", b"[::1]:8080"),
        (b"a.test", b"a.test"),
    ],
)
def test_the_host_is_read_without_whitespace_or_a_trailing_dot(sent: bytes, seen: bytes) -> None:
    headers = [(b"host", sent), (b"x-user", b"dave ")]
    head = RequestHead(headers, ID)
    assert head.host == seen
    # ... and so is what every later stage reads: the scope's own list.
    assert headers == [(b"host", seen), (b"x-user", b"dave")]


def test_values_without_whitespace_are_left_as_they_are() -> None:
    headers = [(b"host", b"a.test"), (b"x-a", b"in ner"), (b"x-empty", b"")]
    original = list(headers)
    RequestHead(headers, ID)
    assert headers == original


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb", b"\x7f", b"\x1b[0m"])
def test_control_characters_in_any_value_are_seen(value: bytes) -> None:
    assert RequestHead([(b"x-any", value)], ID).control_character


def test_a_tab_is_no_control_character() -> None:
    assert not RequestHead([(b"x-any", b"a\tb")], ID).control_character


# -- the edge checks ---------------------------------------------------------------------

REQUESTS = EdgeChecks.for_requests(4, 100)
HANDSHAKES = EdgeChecks.for_handshakes(4, 100)


def refusal(checks: EdgeChecks, scope: dict[str, Any]) -> GatewayError:
    head, _ = context(scope)
    with pytest.raises(GatewayError) as caught:
        checks.check(scope, head)
    return caught.value


def test_a_plain_request_passes() -> None:
    scope = scope_of([(b"host", b"gw"), (b"content-length", b"3")], method="POST")
    head, _ = context(scope)
    REQUESTS.check(scope, head)
    HANDSHAKES.check(scope, head)


@pytest.mark.parametrize(
    ("checks", "count_detail", "size_detail"),
    [
        (REQUESTS, "more than 4 headers", "headers over 100 bytes"),
        (HANDSHAKES, "too many headers", "headers too large"),
    ],
)
def test_header_limits_in_each_wording(
    checks: EdgeChecks, count_detail: str, size_detail: str
) -> None:
    many = refusal(checks, scope_of([(b"x-a", b"1")] * 5))
    assert (many.status, many.code, many.detail) == (431, "too_many_headers", count_detail)
    large = refusal(checks, scope_of([(b"x-a", b"v" * 98)]))
    assert (large.status, large.code, large.detail) == (431, "headers_too_large", size_detail)


def test_an_unknown_method_is_501() -> None:
    error = refusal(REQUESTS, scope_of([(b"host", b"gw")], method="BREW"))
    assert (error.status, error.code) == (501, "method_not_implemented")


def test_framing_is_checked_for_requests_only() -> None:
    # A handshake with any body header is refused by the handshake's own rule, after these.
    scope = scope_of([(b"host", b"gw"), (b"content-length", b"5"), (b"content-length", b"6")])
    error = refusal(REQUESTS, scope)
    assert (error.status, error.detail) == (400, "invalid Content-Length")
    head, _ = context(scope)
    HANDSHAKES.check(scope, head)


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ([(b"host", b"gw"), (b"x-a", b"a\x00")], "control character in a header value"),
        ([(b"host", b"a"), (b"host", b"b")], "more than one Host header"),
    ],
)
def test_ambiguous_heads_close_an_http1_connection_but_not_a_handshake(
    headers: list[tuple[bytes, bytes]], detail: str
) -> None:
    http1 = refusal(REQUESTS, scope_of(headers))
    assert (http1.status, http1.code, http1.detail) == (400, "bad_request", detail)
    assert http1.headers == [(b"connection", b"close")]
    assert refusal(REQUESTS, scope_of(headers, http_version="2")).headers == []
    handshake = refusal(HANDSHAKES, scope_of(headers))
    assert (handshake.status, handshake.detail, handshake.headers) == (400, detail, [])


def test_the_target_is_checked_before_the_header_values() -> None:
    scope = scope_of([(b"x-a", b"a\x00")], raw_path=b"/a#b")
    assert refusal(REQUESTS, scope).detail == "fragment (#) in request target"
    assert refusal(HANDSHAKES, scope).detail == "fragment (#) in request target"


# -- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_path",
    [b"/api/x", b"/api/x/", b"/", b"/a%2Fb", b"//a", b"/a/./b", b"/a/../b", b"/a\\b", b"x"],
)
def test_the_stage_normalises_exactly_what_needs_it(raw_path: bytes) -> None:
    scope = scope_of([(b"host", b"gw")], raw_path=raw_path)
    _, ctx = context(scope)
    try:
        Normaliser("keep").normalise(ctx)
    except GatewayError:
        assert needs_normalizing(raw_path)  # only the slow path refuses
        return
    if not needs_normalizing(raw_path):
        assert scope["raw_path"] == raw_path and scope["path"] == raw_path.decode()


def test_an_absolute_form_target_gives_the_host_matched_on() -> None:
    scope = scope_of([(b"host", b"gw")], raw_path=b"http://other.example/api/x")
    _, ctx = context(scope)
    Normaliser("keep").normalise(ctx)
    assert (ctx.host, scope["path"]) == (b"other.example", "/api/x")


# -- identity ------------------------------------------------------------------------------

TRUSTED = TrustedProxies([ipaddress.ip_network("10.0.0.0/8")])


def test_an_untrusted_peer_is_the_client_and_no_forwarding_is_believed() -> None:
    scope = scope_of([(b"x-forwarded-for", b"203.0.113.9")], client="192.0.2.10")
    _, ctx = context(scope)
    Identity(TRUSTED, "propagate").identify(ctx, None, "http")
    assert (ctx.client_ip, ctx.forwarding, ctx.traceparent) == ("192.0.2.10", None, None)


def test_a_trusted_peer_names_the_client() -> None:
    scope = scope_of([(b"x-forwarded-for", b"203.0.113.9")], client="10.1.2.3")
    _, ctx = context(scope)
    Identity(TRUSTED, "propagate").identify(ctx, None, "https")
    assert ctx.client_ip == "203.0.113.9"
    assert ctx.forwarding is not None
    assert (b"x-forwarded-proto", b"https") in ctx.forwarding


def test_a_valid_traceparent_gets_this_hops_span_and_keeps_tracestate() -> None:
    headers = [(b"traceparent", PARENT), (b"tracestate", b"k=v")]
    scope = scope_of(headers)
    head, ctx = context(scope)
    Identity(TrustedProxies([]), "propagate").identify(ctx, head.traceparent, "http")
    assert ctx.traceparent is not None
    assert ctx.traceparent[:36] == PARENT[:36] and ctx.traceparent != PARENT
    assert (b"tracestate", b"k=v") in scope["headers"]


def test_start_mode_begins_a_trace_and_drops_a_tracestate_without_a_parent() -> None:
    scope = scope_of([(b"tracestate", b"k=v")])
    _, ctx = context(scope)
    Identity(TrustedProxies([]), "start").identify(ctx, None, "http")
    assert ctx.traceparent is not None and ctx.traceparent.startswith(b"00-")
    assert scope["headers"] == []
