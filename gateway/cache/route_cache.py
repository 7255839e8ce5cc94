"""``[routes.cache]``: a route's responses stored and served as a shared cache (RFC 9111;
docs/cache.md). The stage stands in front of the upstream dispatch:

- **GET and HEAD** look up the route's store (HEAD is answered from a stored GET). A fresh
  response the request accepts is a hit: served without the upstream, with ``Age`` and
  ``Cache-Status``. A stale one with a validator is revalidated (``If-None-Match`` /
  ``If-Modified-Since``): a 304 refreshes it and it is served; within the response's
  ``stale-while-revalidate`` it is served at once and refreshed in the background; within
  ``stale-if-error`` it is served when the upstream fails or answers 5xx.
- **Concurrent misses coalesce**: the first fetches, the others wait (up to
  ``coalesce_timeout``) and are served what it stored, or fetch for themselves when it
  stored nothing or failed.
- **Unsafe methods** (POST, PUT, PATCH, DELETE) that succeed invalidate the target and
  their ``Location`` / ``Content-Location`` on the same host (§4.4).
- **Bypassed**: a request with ``Range`` (partial content is never stored or served from
  the cache), or with ``Cache-Control: no-store``.

What a request became is ``ctx.cache`` (hit, miss, stale, coalesced, bypass) for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from gateway.asgi_types import Receive, Send
from gateway.cache import rfc9111
from gateway.cache.settings import CacheSettings
from gateway.cache.store import Entry, Headers, Key
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError
from gateway.edge.head import RequestHead
from upstreams.messages import UpstreamResponse, whole

#: The route's runtime (gateway.state.RouteRuntime): passed through to the dispatch.
RouteRuntime = Any


class UpstreamDispatch(Protocol):
    """What the cache uses of gateway/pipeline/upstream_dispatch.py's dispatch: sending a
    request upstream (its response wrapped by the cache) and sending a response."""

    async def forward(
        self,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        receive: Receive,
        send: Send,
        *,
        wrap: Callable[[UpstreamResponse], UpstreamResponse] | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None: ...

    async def respond(
        self, response: UpstreamResponse, send: Send, runtime: RouteRuntime, ctx: RequestContext
    ) -> None: ...


log = logging.getLogger("quartgate")

UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NAME = b"quartgate"


class Store(Protocol):
    """Where a route's responses are kept: gateway/cache/store.py (memory) or
    gateway/cache/redis_store.py."""

    async def lookup(self, key: Key, request: Headers) -> Entry | None: ...

    async def save(self, key: Key, entry: Entry) -> None: ...

    async def refreshed(self, key: Key, entry: Entry, before: int) -> None: ...

    async def remove(self, key: Key) -> int: ...

    async def remove_under(self, route: str | None, target: bytes | None) -> int: ...

    def body(self, entry: Entry) -> AsyncIterator[bytes]: ...


class _Flight:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = asyncio.Event()


class RouteCache:
    def __init__(
        self, route: str, settings: CacheSettings, store: Store, id_header: bytes = b"x-request-id"
    ) -> None:
        self.route = route
        self.settings = settings
        self.store = store
        self._flights: dict[Key, _Flight] = {}
        #: When each recently invalidated key was (``time.time()``).
        self._invalidated: dict[Key, float] = {}
        #: The request id header, which the gateway sets on every request it forwards.
        self.id_header = id_header
        self._refreshing: set[Key] = set()

    # -- the stage ---------------------------------------------------------------------------
    async def handle(
        self,
        dispatch: UpstreamDispatch,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        receive: Receive,
        send: Send,
    ) -> None:
        scope = ctx.scope
        method = scope["method"]
        request: list[tuple[bytes, bytes]] = scope["headers"]
        key = self.key(ctx)
        if method not in ("GET", "HEAD"):
            if method not in UNSAFE:
                await dispatch.forward(runtime, ctx, head, receive, send)
                return
            seen: list[UpstreamResponse] = []
            await dispatch.forward(runtime, ctx, head, receive, send, wrap=_keep(seen))
            if seen and seen[0].status < 400:  # §4.4: a non-error response invalidates
                await self._invalidate(key, ctx, seen[0].headers)
            return
        cc = rfc9111.request_directives(request)
        if "no-store" in cc or _bypassed(request, head):
            ctx.cache = "bypass"
            await dispatch.forward(runtime, ctx, head, receive, send)
            return
        entry = await self.store.lookup(key, request)
        if entry is not None and self._usable(entry, cc, request, ctx):
            ctx.cache = "hit"
            await self._serve(dispatch, runtime, ctx, send, entry, b"hit")
            return
        if entry is not None and self._while_revalidate(entry, cc):
            ctx.cache = "stale"
            self._refresh_later(dispatch, runtime, ctx, head, key, entry)
            await self._serve(
                dispatch, runtime, ctx, send, entry, b"hit; detail=stale-while-revalidate"
            )
            return
        if "only-if-cached" in cc:
            raise GatewayError(504, "not_cached", "only-if-cached and no stored response")
        flight = self._flights.get(key) if self.settings.coalesce else None
        if flight is not None and entry is None and not _conditional(request):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.coalesce_timeout):
                    await flight.done.wait()
            stored = await self.store.lookup(key, request)
            if stored is not None and self._usable(stored, {}, request, ctx):
                ctx.cache = "coalesced"
                await self._serve(dispatch, runtime, ctx, send, stored, b"hit; detail=coalesced")
                return
        await self._fetch(dispatch, runtime, ctx, head, receive, send, key, entry, cc)

    def key(self, ctx: RequestContext) -> Key:
        """(route, scheme://host, request-target): the URI the client asked for, its scheme
        the one the upstream is told (a trusted proxy's ``X-Forwarded-Proto``, else the
        connection's), so an upstream that builds links from it is never answered across
        schemes."""
        scope = ctx.scope
        target = scope["raw_path"]
        if scope["query_string"]:
            target = target + b"?" + scope["query_string"]
        scheme = b"https" if scope["scheme"] == "https" else b"http"
        told: list[bytes] = []  # the host and port the upstream is told, when not the Host
        for name, value in ctx.forwarding or ():
            if name == b"x-forwarded-proto":
                scheme = value.lower()
            elif name in (b"x-forwarded-host", b"x-forwarded-port", b"forwarded"):
                told.append(name + b"=" + value.lower())
        origin = scheme + b"://" + ctx.host.lower()
        if told:
            origin += b" " + b";".join(told)
        return (self.route, origin, target)

    # -- lookup ------------------------------------------------------------------------------

    def _usable(
        self,
        entry: Entry,
        cc: rfc9111.Directives,
        request: list[tuple[bytes, bytes]],
        ctx: RequestContext,
    ) -> bool:
        """The stored response may answer this request without the upstream (§4.2, §5.2.1)."""
        if "no-cache" in cc or "no-cache" in entry.cc:
            return False
        if _authenticated(request, ctx) and not (
            {"public", "s-maxage", "must-revalidate"} & entry.cc.keys()
        ):
            return False  # §3.5: shared only when the response said so
        age, ttl = entry.age(), entry.ttl()
        max_age = rfc9111.delta(cc.get("max-age")) if "max-age" in cc else None
        if max_age is not None and age > max_age:
            return False
        min_fresh = rfc9111.delta(cc.get("min-fresh")) if "min-fresh" in cc else None
        if min_fresh is not None and ttl < min_fresh:
            return False
        if ttl > 0:
            return True
        if {"must-revalidate", "proxy-revalidate", "s-maxage"} & entry.cc.keys():
            return False  # stale: never served without validation
        if "max-stale" in cc:
            allowed = rfc9111.delta(cc["max-stale"])
            return allowed is None or -ttl <= allowed  # bare max-stale: any staleness
        return False

    def _while_revalidate(self, entry: Entry, cc: rfc9111.Directives) -> bool:
        window = rfc9111.delta(entry.cc.get("stale-while-revalidate"))
        if not window or "no-cache" in cc or "no-cache" in entry.cc:
            return False
        if {"must-revalidate", "proxy-revalidate"} & entry.cc.keys():
            return False
        return -window < entry.ttl() <= 0

    def _if_error(self, entry: Entry | None) -> bool:
        if entry is None or {"must-revalidate", "proxy-revalidate", "no-cache"} & entry.cc.keys():
            return False
        window = rfc9111.delta(entry.cc.get("stale-if-error"))
        if window is None:
            window = int(self.settings.stale_if_error)
        return window > 0 and entry.ttl() > -window

    # -- serving -----------------------------------------------------------------------------
    async def _serve(
        self,
        dispatch: UpstreamDispatch,
        runtime: RouteRuntime,
        ctx: RequestContext,
        send: Send,
        entry: Entry,
        status: bytes,
    ) -> None:
        request = ctx.scope["headers"]
        headers = [(n, v) for n, v in entry.headers if n != b"age"]
        headers.append((b"age", b"%d" % int(entry.age())))
        headers.append((b"cache-status", b"%s; %s; ttl=%d" % (NAME, status, int(entry.ttl()))))
        await dispatch.respond(self._stored(entry, headers, request, ctx), send, runtime, ctx)

    def _stored(
        self,
        entry: Entry,
        headers: Headers,
        request: Headers,
        ctx: RequestContext,
        sent_to: str = "",
    ) -> UpstreamResponse:
        """The stored response as the client gets it: a 304 for its own matching conditional,
        no body for HEAD, the body streamed from a shared store."""
        if _not_modified(request, entry):
            kept = [(n, v) for n, v in headers if n not in (b"content-length", b"content-type")]
            return whole(304, kept, b"", sent_to)
        if ctx.scope["method"] == "HEAD" or not entry.body_key:
            return whole(entry.status, headers, entry.body, sent_to)
        body = self.store.body(entry)
        return UpstreamResponse(entry.status, headers, body, _closed, sent_to=sent_to)

    # -- fetching ----------------------------------------------------------------------------
    async def _fetch(
        self,
        dispatch: UpstreamDispatch,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        receive: Receive,
        send: Send,
        key: Key,
        entry: Entry | None,
        cc: rfc9111.Directives,
    ) -> None:
        request = ctx.scope["headers"]
        get = ctx.scope["method"] == "GET"
        extra: list[tuple[bytes, bytes]] = []
        if entry is not None and not _conditional(request):  # the cache's own validation
            etag = rfc9111.header(entry.headers, b"etag")
            modified = rfc9111.header(entry.headers, b"last-modified")
            if etag is not None:
                extra.append((b"if-none-match", etag))
            if modified is not None:
                extra.append((b"if-modified-since", modified))
        flight = None
        if get and self.settings.coalesce and key not in self._flights:
            flight = self._flights[key] = _Flight()
        sent_at = time.time()
        ctx.cache = "miss" if entry is None else "stale"
        if "no-cache" in cc:
            ctx.cache = "miss"

        def wrap(response: UpstreamResponse) -> UpstreamResponse:
            now = time.time()
            if extra and entry is not None and response.status == 304:
                self._revalidated(key, entry, response.headers, sent_at, now)
                _close_later(response)
                headers = [(n, v) for n, v in entry.headers if n != b"age"]
                headers.append((b"age", b"%d" % int(entry.age())))
                headers.append((b"cache-status", NAME + b"; fwd=stale; fwd-status=304"))
                # A cookie the 304 set is this client's: sent to it, never stored.
                headers += [(n, v) for n, v in response.headers if n == b"set-cookie"]
                return self._stored(entry, headers, [], ctx, response.sent_to)
            if response.status >= 500 and self._if_error(entry):
                assert entry is not None
                ctx.cache = "stale"
                _close_later(response)
                return self._stale_response(entry, ctx, response.sent_to)
            forwarded = b"stale" if entry is not None else b"miss"
            response_cc = rfc9111.directives(rfc9111.header(response.headers, b"cache-control"))
            why = rfc9111.storable(
                response.status, request, response.headers, response_cc,
                heuristic=self.settings.heuristic,
            )  # fmt: skip
            if why is None:
                why = self._unshareable(response, response_cc, request, ctx)
            if response.status == 304 and why is None:
                why = "a 304 is an answer to its request's own conditional"
            if not get or why is not None:
                if flight is not None:  # nothing will be stored: the waiting fetch now
                    self._land(key, flight)
                response.headers.append(
                    (
                        b"cache-status",
                        NAME + b"; fwd=" + forwarded + b"; fwd-status=%d" % response.status,
                    )
                )
                return response
            response.headers.append((b"cache-status", NAME + b"; fwd=" + forwarded + b"; stored"))
            return self._tee(key, response, request, sent_at, now, flight)

        try:
            await dispatch.forward(runtime, ctx, head, receive, send, wrap=wrap, extra=extra)
        except GatewayError as error:
            if error.status >= 500 and self._if_error(entry) and not ctx.status:
                assert entry is not None
                ctx.cache = "stale"
                log.info(
                    "cache: %s %s: upstream failed (%s): stale response served",
                    ctx.scope["method"], ctx.scope["path"], error.code,
                    extra={"request_id": ctx.request_id.decode("ascii")},
                )  # fmt: skip
                await dispatch.respond(self._stale_response(entry, ctx, ""), send, runtime, ctx)
                return
            raise
        finally:
            if flight is not None and self._flights.get(key) is flight and not _tee_owns(flight):
                self._land(key, flight)

    def _unshareable(
        self,
        response: UpstreamResponse,
        cc: rfc9111.Directives,
        request: list[tuple[bytes, bytes]],
        ctx: RequestContext,
    ) -> str | None:
        """What a gateway in front of the upstream knows and the RFC's rules cannot: why
        this response may not be stored for other clients."""
        if (
            _authenticated(request, ctx)
            and not {"public", "s-maxage", "must-revalidate"} & cc.keys()
        ):
            return "an authenticated consumer's response"  # an API key, a hidden JWT
        for name in rfc9111.vary_names(response.headers):
            if name in GATEWAY_SET or name == self.id_header:
                return f"Vary names {name.decode('latin-1')}, which the gateway sets"
        return None

    def _stale_response(self, entry: Entry, ctx: RequestContext, sent_to: str) -> UpstreamResponse:
        headers = [(n, v) for n, v in entry.headers if n != b"age"]
        headers.append((b"age", b"%d" % int(entry.age())))
        headers.append(
            (b"cache-status", b"%s; hit; ttl=%d; detail=stale-if-error" % (NAME, int(entry.ttl())))
        )
        return self._stored(entry, headers, [], ctx, sent_to)

    def _tee(
        self,
        key: Key,
        response: UpstreamResponse,
        request: list[tuple[bytes, bytes]],
        sent_at: float,
        received_at: float,
        flight: _Flight | None,
    ) -> UpstreamResponse:
        """The response as it streams to the client, a copy kept up to the entry cap; stored
        when its body ended whole and within the cap."""
        limit = self.settings.max_entry_size
        # As the upstream sent them (Date and Age count for its age); the hop-by-hop ones
        # are dropped when it is served, as for any response.
        headers = [(n, v) for n, v in response.headers if n != b"cache-status"]
        store = self.store
        heuristic = self.settings.heuristic
        status = response.status
        if flight is not None:
            _TEE_OWNED.add(flight)

        async def save(body: bytes | None) -> None:
            try:
                if body is not None and self._invalidated.get(key, 0.0) < sent_at:
                    entry = Entry.of(
                        status, headers, body, request, sent_at, received_at, heuristic=heuristic
                    )
                    await store.save(key, entry)
            finally:
                if flight is not None:  # the waiting requests look it up now
                    _TEE_OWNED.discard(flight)
                    self._land(key, flight)

        def finish(body: bytes | None) -> None:
            _spawn(save(body))

        if response.complete:
            finish(response.first if len(response.first) <= limit else None)
            return response
        body = response.body
        kept = bytearray(response.first)

        async def copy() -> AsyncGenerator[bytes, None]:
            started.append(True)
            whole = False
            size = len(kept)
            try:
                async for chunk in body:
                    size += len(chunk)
                    if size <= limit:
                        kept.extend(chunk)
                    yield chunk
                whole = True
            finally:
                finish(bytes(kept) if whole and size <= limit else None)

        streamed = copy()
        upstream_close = response.aclose
        started: list[bool] = []

        async def aclose() -> None:
            if started:
                await streamed.aclose()  # a body cut short stores nothing, lands the flight
            else:  # never iterated (its client was gone before the head): its finally
                finish(None)  # would not run, and the waiting requests would wait in vain
            await upstream_close()

        response.body = streamed
        response.aclose = aclose
        return response

    def _land(self, key: Key, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()

    def _revalidated(
        self, key: Key, entry: Entry, fresh: list[tuple[bytes, bytes]], sent: float, now: float
    ) -> None:
        before = entry.size
        entry.headers = rfc9111.updated(entry.headers, fresh)
        entry.request_time, entry.response_time = sent, now
        entry.refresh(heuristic=self.settings.heuristic)
        _spawn(self.store.refreshed(key, entry, before))

    def _refresh_later(
        self,
        dispatch: UpstreamDispatch,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        key: Key,
        entry: Entry,
    ) -> None:
        """stale-while-revalidate: one background revalidation per key at a time."""
        if key in self._refreshing:
            return
        self._refreshing.add(key)
        background = RequestContext(ctx.scope, ctx.request_id, ctx.host, time.perf_counter())
        background.forwarding = ctx.forwarding
        background.route = ctx.route

        receive = _NoBody()

        async def refresh() -> None:
            try:
                await self._fetch(
                    dispatch, runtime, background, head, receive, _discard, key, entry, {}
                )
            except Exception as error:
                log.info(
                    "cache: background revalidation of %s failed: %s",
                    key[2].decode("latin-1"),
                    error,
                )
            finally:
                receive.done.set()
                self._refreshing.discard(key)

        task = asyncio.ensure_future(refresh())
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _invalidate(
        self, key: Key, ctx: RequestContext, headers: list[tuple[bytes, bytes]]
    ) -> None:
        route, origin, _ = key
        self._gone(key)
        await self.store.remove(key)
        host = origin.partition(b"://")[2].partition(b" ")[0]
        for name in (b"location", b"content-location"):
            value = rfc9111.header(headers, name)
            if not value:
                continue
            target = _same_host_target(value, host)
            if target is not None:
                self._gone((route, origin, target))
                await self.store.remove((route, origin, target))

    def _gone(self, key: Key) -> None:
        """``key`` was invalidated now: a fetch of it that began before must not store what
        it gets (the response from before the change; in this worker)."""
        invalidated = self._invalidated
        invalidated[key] = time.time()
        if len(invalidated) > 4096:  # only in-flight fetches need them: keep the recent
            for old in list(invalidated)[:2048]:
                del invalidated[old]


#: Flights whose tee lands them when its body ends (not when forward returns).
_TEE_OWNED: set[_Flight] = set()
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _tee_owns(flight: _Flight) -> bool:
    return flight in _TEE_OWNED


def _keep(seen: list[UpstreamResponse]) -> Any:
    def wrap(response: UpstreamResponse) -> UpstreamResponse:
        seen.append(response)
        return response

    return wrap


#: Request headers the gateway sets itself when it forwards (gateway/edge/forwarding.py):
#: a response that varies on them varies per client, not per request the client made.
GATEWAY_SET = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
     b"forwarded", b"via", b"traceparent", b"tracestate", b"x-consumer-username"}
)  # fmt: skip
#: Preconditions other than the validation ones: their answers (412, 206) are theirs alone.
PRECONDITIONS = (b"if-match", b"if-unmodified-since", b"if-range", b"range")


def _bypassed(request: list[tuple[bytes, bytes]], head: RequestHead) -> bool:
    """Requests the cache neither answers nor stores the answer of: a range or another
    precondition, or a GET/HEAD with a body (not in the key, yet the upstream sees it)."""
    if any(name in PRECONDITIONS for name, _ in request):
        return True
    length = head.content_length
    return head.transfer_encoding is not None or (length is not None and length.strip() != b"0")


def _authenticated(request: list[tuple[bytes, bytes]], ctx: RequestContext) -> bool:
    """``Authorization`` (§3.5), or a consumer the gateway authenticated (an API key, a JWT
    whose header it hid): either way the response may be that consumer's alone."""
    return ctx.consumer is not None or rfc9111.header(request, b"authorization") is not None


def _conditional(request: list[tuple[bytes, bytes]]) -> bool:
    return any(n in (b"if-none-match", b"if-modified-since") for n, _ in request)


def _not_modified(request: list[tuple[bytes, bytes]], entry: Entry) -> bool:
    """The client's own conditional matches the stored response (§4.3.2)."""
    if entry.status != 200:
        return False
    tags = rfc9111.header(request, b"if-none-match")
    if tags is not None:
        return rfc9111.weak_match(tags, rfc9111.header(entry.headers, b"etag"))
    since = rfc9111.http_date(rfc9111.header(request, b"if-modified-since"))
    if since is None:
        return False
    modified = rfc9111.http_date(rfc9111.header(entry.headers, b"last-modified"))
    modified = modified or rfc9111.http_date(rfc9111.header(entry.headers, b"date"))
    return modified is not None and modified <= since


def _same_host_target(value: bytes, host: bytes) -> bytes | None:
    """A Location's request-target when it is on ``host`` (or relative), else None."""
    if value.startswith(b"/"):
        return value
    for scheme in (b"http://", b"https://"):
        if value.lower().startswith(scheme):
            rest = value[len(scheme) :]
            authority, slash, path = rest.partition(b"/")
            if authority.lower() == host:
                return slash + path
    return None


def _close_later(response: UpstreamResponse) -> None:
    _spawn(response.aclose())


def _spawn(work: Awaitable[Any]) -> None:
    """Run ``work`` in the background, kept referenced until it is done."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _closed() -> None:
    return None


class _NoBody:
    """``receive`` of a background request: no body, then (once it is done) the end."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self._sent = False

    async def __call__(self) -> dict[str, Any]:
        if not self._sent:
            self._sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}


async def _discard(message: MutableMapping[str, Any]) -> None:
    return None
