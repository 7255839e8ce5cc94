"""Unit tests for route compilation and matching: pure logic, no sockets."""

from __future__ import annotations

import pytest

from routes.model import MatchKind, Route, RouteSpec, RouteTable, validate_path


def table(*specs: RouteSpec) -> RouteTable:
    return RouteTable(specs)


def spec(name: str, path: str, **kw: object) -> RouteSpec:
    return RouteSpec(name=name, path=path, upstream="u", **kw)  # type: ignore[arg-type]


def matched(t: RouteTable, path: str, host: str = "", method: str = "GET") -> str | None:
    m = t.match(host, path, method)
    return m.route.name if m.kind is MatchKind.FULL and m.route else None


def test_prefix_on_segment_boundaries() -> None:
    t = table(spec("users", "/api/users"))
    assert matched(t, "/api/users") == "users"
    assert matched(t, "/api/users/") == "users"
    assert matched(t, "/api/users/7") == "users"
    assert matched(t, "/api/usersx") is None
    assert matched(t, "/api") is None


def test_root_route_matches_everything() -> None:
    t = table(spec("root", "/"), spec("a", "/a"))
    assert matched(t, "/anything/else") == "root"
    assert matched(t, "/a/b") == "a"


def test_longest_literal_wins_regardless_of_order() -> None:
    t = table(spec("short", "/api"), spec("long", "/api/users/admin"), spec("mid", "/api/users"))
    assert matched(t, "/api/users/admin/1") == "long"
    assert matched(t, "/api/users/1") == "mid"
    assert matched(t, "/api/x") == "short"


def test_host_beats_path_length() -> None:
    t = table(spec("any", "/api/users/deep"), spec("host", "/", host="API.Example.com"))
    assert matched(t, "/api/users/deep", host="api.example.com") == "host"
    assert matched(t, "/api/users/deep", host="other") == "any"


def test_wildcard_host_between_exact_and_any() -> None:
    t = table(
        spec("any", "/x"),
        spec("wild", "/x", host="*.example.com"),
        spec("exact", "/x", host="a.example.com"),
    )
    assert matched(t, "/x", host="a.example.com") == "exact"
    assert matched(t, "/x", host="b.example.com") == "wild"
    assert matched(t, "/x", host="example.org") == "any"


def test_template_matches_one_non_empty_segment_and_captures() -> None:
    t = table(spec("item", "/items/{id}/parts/{part}"))
    m = t.match("", "/items/42/parts/7/more", "GET")
    assert m.kind is MatchKind.FULL
    assert m.params == {"id": "42", "part": "7"}
    assert matched(t, "/items//parts/7") is None
    assert matched(t, "/items/42/parts") is None


def test_literal_beats_template_of_same_length() -> None:
    t = table(spec("tpl", "/items/{id}"), spec("lit", "/items/new"))
    assert matched(t, "/items/new") == "lit"
    assert matched(t, "/items/5") == "tpl"


def test_template_with_regex_characters_in_literal_part() -> None:
    t = table(spec("dots", "/v1.0/{id}"))
    assert matched(t, "/v1.0/7") == "dots"
    assert matched(t, "/v1x0/7") is None


def test_method_mismatch_is_partial_with_union_of_methods() -> None:
    t = table(
        spec("get", "/r", methods=frozenset({"GET", "HEAD"})),
        spec("post", "/r", methods=frozenset({"POST"})),
    )
    m = t.match("", "/r", "DELETE")
    assert m.kind is MatchKind.PARTIAL
    assert m.allow == {"GET", "HEAD", "POST"}
    assert t.match("", "/nothing", "GET").kind is MatchKind.NONE


def test_less_specific_route_serves_method_the_specific_one_lacks() -> None:
    t = table(spec("ro", "/api/users", methods=frozenset({"GET"})), spec("all", "/api"))
    assert matched(t, "/api/users", method="POST") == "all"


@pytest.mark.parametrize(
    ("path", "raw", "expected"),
    [
        ("/api/users", b"/api/users/7", b"/7"),
        ("/api/users", b"/api/users", b"/"),
        ("/api/users", b"/api/users/", b"/"),
        ("/api/users", b"/api/%75sers/7/8", b"/7/8"),  # encoded prefix: strip by segments
        ("/", b"/a/b", b"/a/b"),
        ("/items/{id}", b"/items/42/parts", b"/parts"),
    ],
)
def test_rewrite_strips_prefix_segments(path: str, raw: bytes, expected: bytes) -> None:
    assert Route(spec("r", path), 0).rewrite(raw) == expected


@pytest.mark.parametrize(
    ("path", "rewrite", "raw", "expected"),
    [
        ("/api/users", "/v1/users", b"/api/users/7", b"/v1/users/7"),
        ("/api/users", "/v1/users/", b"/api/users/7", b"/v1/users/7"),
        ("/api/users", "/v1/users", b"/api/users", b"/v1/users"),
        ("/api/users", "/v1/users", b"/api/users/", b"/v1/users/"),
        ("/api/users", "/", b"/api/users/7", b"/7"),  # what strip_prefix does
        ("/api", "/v2", b"/api/a%2Fb", b"/v2/a%2Fb"),
        ("/items/{id}", "/parts", b"/items/42/x", b"/parts/x"),
        ("/", "/base", b"/a/b", b"/base/a/b"),
    ],
)
def test_prefix_rewrite_replaces_the_prefix_segments(
    path: str, rewrite: str, raw: bytes, expected: bytes
) -> None:
    assert Route(spec("r", path, prefix_rewrite=rewrite), 0).rewrite(raw) == expected


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("api", "must start with '/'"),
        ("/a//b", "must not contain"),
        ("/a/{id", "template segment"),
        ("/a/x{id}", "template segment"),
        ("/a/{id}/{id}", "repeats"),
        ("/a/../b", "'.' or '..'"),
        ("/a?x=1", "must not contain"),
    ],
)
def test_invalid_paths(path: str, problem: str) -> None:
    reason = validate_path(path)
    assert reason is not None and problem in reason


def test_valid_paths() -> None:
    for path in ("/", "/a", "/a/", "/a/{id}", "/v1.0/{a}/{b}/c"):
        assert validate_path(path) is None
