"""``[routes.headers]``: add, set and remove request and response headers.

Values are templates with ``{request_id}``, ``{client_ip}``, ``{consumer}``, ``{route}`` and
the route's path parameters (``{id}`` for ``/items/{id}``); ``{{`` and ``}}`` are literal
braces. Templates are compiled at startup. A rendered value never carries CR, LF, NUL or
other control characters (a path parameter may hold ``%0d%0a`` decoded): they are removed.

Order: remove, then set (replace), then add (append), as Envoy applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from gateway.edge.context import RequestContext

FIXED_PLACEHOLDERS: Final = frozenset({"request_id", "client_ip", "consumer", "route"})
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: Headers a rule may not touch: framing and forwarding are the gateway's job.
PROTECTED: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    }
)

#: A template: literal bytes and placeholder names, alternating by type.
Template = tuple[bytes | str, ...]


@dataclass(frozen=True, slots=True)
class HeaderRuleSet:
    remove: frozenset[bytes] = frozenset()
    set: tuple[tuple[bytes, Template], ...] = ()
    add: tuple[tuple[bytes, Template], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.set or self.add)


@dataclass(frozen=True, slots=True)
class HeaderRules:
    request: HeaderRuleSet
    response: HeaderRuleSet


def name_reason(name: Any) -> str | None:
    """Why ``name`` cannot be a rule's header name, or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return "must be a header name"
    if name.lower() in PROTECTED:
        return f"{name!r} is set by the gateway and cannot be changed by a rule"
    return None


def compile_template(text: str, params: tuple[str, ...]) -> Template:
    """``text`` compiled once; ValueError names what is wrong with it."""
    parts: list[bytes | str] = []
    literal = bytearray()
    position = 0
    for found in _PLACEHOLDER.finditer(text):
        literal += text[position : found.start()].encode("utf-8")
        position = found.end()
        token = found.group(0)
        if token in ("{{", "}}"):
            literal += token[0].encode()
            continue
        name = found.group(1)
        if name is None:
            raise ValueError("unbalanced '{' or '}' (write '{{' for a literal brace)")
        if name not in FIXED_PLACEHOLDERS and name not in params:
            known = ", ".join(sorted(FIXED_PLACEHOLDERS | set(params)))
            raise ValueError(f"unknown placeholder {{{name}}} (known: {known})")
        if literal:
            parts.append(bytes(literal))
            literal.clear()
        parts.append(name)
    literal += text[position:].encode("utf-8")
    if literal:
        parts.append(bytes(literal))
    if _CONTROL.search(b"".join(p for p in parts if isinstance(p, bytes))):
        raise ValueError("must not contain control characters")
    return tuple(parts)


def render(template: Template, ctx: RequestContext) -> bytes:
    out = []
    for part in template:
        if isinstance(part, bytes):
            out.append(part)
        elif part == "request_id":
            out.append(ctx.request_id)
        elif part == "client_ip":
            out.append(ctx.client_ip.encode("ascii", "replace"))
        elif part == "consumer":
            out.append((ctx.consumer or "").encode("utf-8"))
        elif part == "route":
            out.append(ctx.route.name.encode("utf-8") if ctx.route else b"")
        else:
            out.append(ctx.params.get(part, "").encode("utf-8"))
    return safe_value(b"".join(out))


def safe_value(value: bytes) -> bytes:
    """A header value with CR, LF, NUL and other control characters removed."""
    if _CONTROL.search(value):
        value = _CONTROL.sub(b"", value)
    return value.strip(b" \t")


def apply(rules: HeaderRuleSet, headers: list[tuple[bytes, bytes]], ctx: RequestContext) -> None:
    """Apply ``rules`` to ``headers`` in place."""
    drop = rules.remove
    if rules.set:
        drop = drop | {name for name, _ in rules.set}
    if drop:
        headers[:] = [(n, v) for n, v in headers if n not in drop]
    for name, template in rules.set:
        headers.append((name, render(template, ctx)))
    for name, template in rules.add:
        headers.append((name, render(template, ctx)))


class HeaderRulesPolicy:
    """Edits the request headers before forwarding and the response headers after."""

    def __init__(self, rules: HeaderRules) -> None:
        self.request = rules.request
        self.response = rules.response

    async def on_request(self, ctx: RequestContext) -> None:
        if self.request:
            headers = list(ctx.scope["headers"])
            apply(self.request, headers, ctx)
            ctx.scope["headers"] = headers

    def on_response(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        if self.response:
            apply(self.response, headers, ctx)
