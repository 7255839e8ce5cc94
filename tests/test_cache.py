"""``[routes.cache]`` through a real gateway, in front of a scripted upstream that answers
with the caching headers each path asks for and counts what reaches it, by path.

What is asserted is what the client got (status, body, ``Age``, ``Cache-Status``) and how
many requests the upstream saw: a hit is a request the upstream never saw.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cache import rfc9111
from gateway.cache.route_cache import RouteCache
from gateway.cache.settings import CacheSettings, CacheStoreSettings
from gateway.cache.store import MAX_VARIANTS, Entry, MemoryStore, memory_store
from gateway.edge.context import RequestContext
from gateway.edge.head import RequestHead
from gateway.ops.control import Control
from tests.support.cache_origin import Origin
from tests.support.gateway import GatewayProcess
from tests.support.observability import Admin, value, wait_until
from tests.support.scripted import ScriptedUpstream
from upstreams.messages import UpstreamResponse

CONFIG = """
[gateway]
trusted_proxies = ["127.0.0.1/32"]

{admin}
[consumers.alice]
api_key_sha256 = ["{alice}"]
[consumers.bob]
api_key_sha256 = ["{bob}"]

[upstreams.origin]
targets = ["{url}"]

[[routes]]
name = "keyed"
path = "/fresh-keyed"
upstream = "origin"
[routes.auth]
api_key = true
[routes.cache]

[[routes]]
name = "cached"
path = "/"
upstream = "origin"
[routes.cache]
max_entry_size = 65536
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[tuple[Origin, ScriptedUpstream]]:
    behaviour = Origin()
    with ScriptedUpstream(behaviour) as upstream:
        yield behaviour, upstream


@pytest.fixture(scope="module")
def gateway(
    origin: tuple[Origin, ScriptedUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, Admin]]:
    admin = Admin()
    config = tmp_path_factory.mktemp("cache") / "gateway.toml"
    config.write_text(
        CONFIG.format(
            admin=admin.section(),
            url=origin[1].url,
            alice=hashlib.sha256(b"alice-key").hexdigest(),
            bob=hashlib.sha256(b"bob-key").hexdigest(),
        )
    )
    process = GatewayProcess(config).start()
    yield process, admin
    process.stop()


@pytest.fixture
def get(gateway: tuple[GatewayProcess, Admin]) -> Iterator[Callable[..., httpx.Response]]:
    with httpx.Client(base_url=gateway[0].url, timeout=15) as client:

        def request(path: str, method: str = "GET", **headers: str) -> httpx.Response:
            wire = {name.replace("_", "-"): value for name, value in headers.items()}
            return client.request(method, path, headers=wire)

        yield request


def seen(origin: tuple[Origin, ScriptedUpstream], path: str) -> int:
    return origin[0].seen[path]


def test_a_fresh_response_is_served_from_the_store(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    first = get("/fresh")
    assert first.text == "/fresh #1"
    assert first.headers["cache-status"] == "quartgate; fwd=miss; stored"
    second = get("/fresh")
    assert second.text == "/fresh #1"
    assert second.headers["cache-status"].startswith("quartgate; hit; ttl=")
    assert int(second.headers["age"]) >= 0
    assert seen(origin, "/fresh") == 1
    head = get("/fresh", "HEAD")  # HEAD from the stored GET
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len("/fresh #1"))
    assert seen(origin, "/fresh") == 1


def test_request_directives_a_shared_cache_honours(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    get("/fresh-directives")
    assert get("/fresh-directives", cache_control="no-cache").text == "/fresh-directives #2"
    assert get("/fresh-directives", cache_control="max-age=0").text == "/fresh-directives #3"
    assert get("/fresh-directives", cache_control="min-fresh=3600").text == "/fresh-directives #4"
    assert get("/fresh-directives").text == "/fresh-directives #4"  # the latest stored
    assert get("/fresh-directives", pragma="no-cache").text == "/fresh-directives #5"
    response = get("/nothing-stored", cache_control="only-if-cached")
    assert response.status_code == 504 and response.json()["error"] == "not_cached"
    assert seen(origin, "/nothing-stored") == 0


def test_a_stale_response_is_revalidated_and_a_304_refreshes_it(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    assert get("/etag").text == "/etag #1"
    again = get("/etag")  # stale at once (max-age=0): revalidated with If-None-Match
    assert again.status_code == 200 and again.text == "/etag #1"
    assert again.headers["cache-status"] == "quartgate; fwd=stale; fwd-status=304"
    assert again.headers["x-revalidated"] == "yes"  # the 304's headers updated the stored ones
    third = get("/etag")  # the 304 said max-age=60: fresh now
    assert third.headers["cache-status"].startswith("quartgate; hit")
    assert seen(origin, "/etag") == 2
    # The client's own conditional is answered from the store.
    not_modified = get("/etag", if_none_match='"v1"')
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert seen(origin, "/etag") == 2


def test_a_304s_cookie_goes_to_its_client_and_is_never_stored(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    get("/etag-cookie")
    revalidated = get("/etag-cookie")  # the 304 sets a cookie: for this client
    assert revalidated.headers["cache-status"] == "quartgate; fwd=stale; fwd-status=304"
    assert revalidated.headers["set-cookie"] == "session=2"
    served = get("/etag-cookie")  # fresh now, from the store: without that cookie
    assert served.headers["cache-status"].startswith("quartgate; hit")
    assert "set-cookie" not in served.headers
    assert seen(origin, "/etag-cookie") == 2


def test_the_scheme_the_upstream_is_told_is_part_of_the_key(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    """Behind a TLS-terminating proxy the upstream may build https links for one and http
    for the other: a response for one scheme never answers the other."""
    assert get("/fresh-scheme", x_forwarded_proto="https").text == "/fresh-scheme #1"
    assert get("/fresh-scheme").text == "/fresh-scheme #2"
    assert get("/fresh-scheme", x_forwarded_proto="https").text == "/fresh-scheme #1"
    assert get("/fresh-scheme").text == "/fresh-scheme #2"


# ---- found by an adversarial review: each a way one client could be served another's ----


def test_a_304_to_one_clients_conditional_is_never_stored_for_the_next(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    attacker = get("/cond", if_none_match='"v1"')
    assert attacker.status_code == 304
    victim = get("/cond")
    assert victim.status_code == 200 and victim.text == "/cond #2"


def test_other_preconditions_bypass_the_cache(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    assert get("/precond", if_match='"nope"').status_code == 412
    victim = get("/precond")
    assert victim.status_code == 200 and victim.text == "/precond #2"


def test_a_get_with_a_body_is_neither_served_nor_stored(
    gateway: tuple[GatewayProcess, Admin], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    with httpx.Client(base_url=gateway[0].url, timeout=15) as client:
        fat = client.request("GET", "/fresh-fat", content=b"EVIL-BODY")
        assert fat.text == "/fresh-fat #1"
        assert client.get("/fresh-fat").text == "/fresh-fat #2"  # not the fat one's


def test_the_forwarded_host_the_upstream_is_told_is_part_of_the_key(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    assert get("/fresh-xfh", x_forwarded_host="evil.test").text == "/fresh-xfh #1"
    assert get("/fresh-xfh").text == "/fresh-xfh #2"
    assert get("/fresh-xfh", x_forwarded_host="evil.test").text == "/fresh-xfh #1"


def test_one_consumers_response_is_never_served_to_another(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    """An API key is no Authorization header, yet the response may be that consumer's."""
    assert get("/fresh-keyed", x_api_key="alice-key").text == "/fresh-keyed #1"
    assert get("/fresh-keyed", x_api_key="bob-key").text == "/fresh-keyed #2"
    assert get("/fresh-keyed", x_api_key="alice-key").text == "/fresh-keyed #3"


def test_a_response_varying_on_a_header_the_gateway_sets_is_not_stored(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    first = get("/vary-xff")
    assert "fwd-status=200" in first.headers["cache-status"]
    assert get("/vary-xff").text == "/vary-xff #2"


async def test_a_fetch_that_began_before_an_invalidation_does_not_store_its_answer(
    gateway: tuple[GatewayProcess, Admin], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    """GET in flight, then a POST changes the resource: the GET's answer is from before the
    change, and the next GET must not be served it from the store."""
    behaviour = origin[0]
    async with httpx.AsyncClient(base_url=gateway[0].url, timeout=30) as client:
        before = asyncio.ensure_future(client.get("/fresh-race"))
        await asyncio.to_thread(behaviour.race_started.wait, 15)  # the GET is at the origin
        assert (await client.post("/fresh-race")).status_code == 200
        behaviour.race_release.set()
        assert (await before).text == "/fresh-race #1"
        assert (await client.get("/fresh-race")).text == "/fresh-race #3"


def test_a_key_keeps_a_bounded_number_of_variants_and_counts_its_bytes() -> None:
    store = MemoryStore(max_size=1 << 30)
    key = ("r", b"http://h", b"/v")
    for n in range(MAX_VARIANTS + 8):
        headers = [(b"cache-control", b"max-age=60"), (b"vary", b"x-v")]
        store.put(key, Entry.of(200, headers, b"b", [(b"x-v", b"%d" % n)], 0, 0, heuristic=False))
    assert len(store.variants(key)) == MAX_VARIANTS
    assert store.size > 0
    store.delete(key)
    assert store.size == 0  # every byte it counted is given back


async def test_a_leader_that_fails_before_its_body_releases_the_waiting_requests() -> None:
    """Its client gone before the head: the copy of its body never starts, and the requests
    waiting for it must not wait for a fetch that will store nothing."""

    class Dispatch:
        calls = 0

        async def forward(self, runtime: object, ctx: RequestContext, head: RequestHead,
                          receive: object, send: Callable[..., Any], *,
                          wrap: Any = None, extra: object = None) -> None:  # fmt: skip
            Dispatch.calls += 1

            async def body() -> AsyncIterator[bytes]:
                yield b"chunk"

            async def close() -> None:
                return None

            response = UpstreamResponse(200, [(b"cache-control", b"max-age=600")], body(), close)
            await self.respond(wrap(response), send, runtime, ctx)

        async def respond(self, response: UpstreamResponse, send: Callable[..., Any],
                          runtime: object, ctx: RequestContext) -> None:  # fmt: skip
            try:
                await send({"type": "http.response.start"})
                async for chunk in response.body:
                    await send({"type": "http.response.body", "body": chunk})
            finally:
                await response.aclose()

    scope = {"type": "http", "method": "GET", "raw_path": b"/x", "query_string": b"",
             "scheme": "http", "headers": [(b"host", b"h")], "path": "/x"}  # fmt: skip
    cache = RouteCache("r", CacheSettings(coalesce_timeout=30.0), MemoryStore(1 << 20))

    async def gone(message: object) -> None:
        raise OSError("client gone before the head")

    head = RequestHead(scope["headers"], b"x-request-id")  # type: ignore[arg-type]
    ctx = RequestContext(scope, b"1", b"h", time.perf_counter())  # type: ignore[arg-type]
    with pytest.raises(OSError):
        await cache.handle(Dispatch(), None, ctx, head, None, gone)  # type: ignore[arg-type]
    for _ in range(10):  # the background save runs: no clock involved
        await asyncio.sleep(0)
    assert cache._flights == {}


def test_vary_keeps_one_variant_per_value(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    assert get("/vary", accept_language="en").text == "/vary #1 en"
    assert get("/vary", accept_language="de, fr").text == "/vary #2 de, fr"
    assert get("/vary", accept_language="en").text == "/vary #1 en"
    assert get("/vary", accept_language="de,fr").text == "/vary #2 de, fr"  # normalised
    assert seen(origin, "/vary") == 2


@pytest.mark.parametrize("path", ["/no-store", "/private", "/cookie"])
def test_never_stored(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream], path: str
) -> None:
    first, second = get(path), get(path)
    assert (first.text, second.text) == (f"{path} #1", f"{path} #2")
    assert first.headers["cache-status"] == "quartgate; fwd=miss; fwd-status=200"
    if path == "/cookie":  # one user's cookie never reaches another
        assert first.headers["set-cookie"] != second.headers["set-cookie"]


def test_an_authorized_response_is_never_served_to_another_user(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    alice = get("/fresh-auth", authorization="Bearer alice")
    bob = get("/fresh-auth", authorization="Bearer bob")
    anonymous = get("/fresh-auth")
    assert (alice.text, bob.text) == ("/fresh-auth #1", "/fresh-auth #2")
    assert anonymous.text == "/fresh-auth #3"
    # public says it may be shared: then it is
    get("/public", authorization="Bearer alice")
    assert get("/public", authorization="Bearer bob").text == "/public #1"


def test_unsafe_methods_invalidate_the_target_and_its_location(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    get("/fresh-target")
    assert get("/fresh-target").text == "/fresh-target #1"
    assert get("/fresh-target", "POST").status_code == 200
    assert get("/fresh-target").text == "/fresh-target #3"
    get("/fresh-created")
    assert get("/fresh-created").text == "/fresh-created #1"
    get("/created", "POST")  # its Location is /fresh-created
    assert get("/fresh-created").text == "/fresh-created #2"


def test_range_requests_bypass_the_cache(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    get("/fresh-range")
    assert get("/fresh-range", range="bytes=0-3").text == "/fresh-range #2"
    assert get("/fresh-range").text == "/fresh-range #1"


def test_stale_if_error_serves_the_stale_response_when_the_upstream_fails(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    assert get("/if-error").text == "/if-error #1"
    served = get("/if-error")  # stale (age 5 > max-age 1): the upstream answers 500
    assert served.status_code == 200 and served.text == "/if-error #1"
    assert "detail=stale-if-error" in served.headers["cache-status"]
    assert seen(origin, "/if-error") == 2


def test_stale_while_revalidate_serves_stale_and_refreshes_behind(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    assert get("/swr").text == "/swr #1"
    stale = get("/swr")
    assert stale.text == "/swr #1"
    assert "detail=stale-while-revalidate" in stale.headers["cache-status"]
    wait_until(lambda: seen(origin, "/swr") == 2 or None, what="the background revalidation")
    wait_until(lambda: get("/swr").text == "/swr #2" or None, what="the refreshed response")


def test_a_body_over_max_entry_size_streams_through_unstored(
    get: Callable[..., httpx.Response], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    first, second = get("/big"), get("/big")
    assert len(first.content) == len(second.content) == len("/big #1") + 100_000
    assert second.text.startswith("/big #2")
    assert seen(origin, "/big") == 2


async def test_concurrent_misses_reach_the_upstream_once(
    gateway: tuple[GatewayProcess, Admin], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    before = gateway[1].scrape()
    async with httpx.AsyncClient(
        base_url=gateway[0].url, timeout=30, limits=httpx.Limits(max_connections=100)
    ) as client:
        responses = await asyncio.gather(*(client.get("/slow") for _ in range(100)))
    assert {r.text for r in responses} == {"/slow #1"}
    assert seen(origin, "/slow") == 1
    statuses = Counter(r.headers["cache-status"].split(";")[1].strip() for r in responses)
    assert statuses["fwd=miss"] == 1

    def counted() -> bool | None:
        after = gateway[1].scrape()
        name = "quartgate_cache_requests_total"
        grew = {
            result: value(after, name, route="cached", result=result)
            - value(before, name, route="cached", result=result)
            for result in ("miss", "coalesced", "hit")
        }
        return (grew["miss"] == 1 and grew["coalesced"] + grew["hit"] == 99) or None

    wait_until(counted, what="1 miss and 99 coalesced or hit in the metrics")


def test_the_admin_api_purges_a_route_or_a_path(
    get: Callable[..., httpx.Response],
    gateway: tuple[GatewayProcess, Admin],
    origin: tuple[Origin, ScriptedUpstream],
) -> None:
    admin = gateway[1]
    for path in ("/fresh-purge/a", "/fresh-purge/b", "/fresh-kept"):
        get(path)
        assert get(path).headers["cache-status"].startswith("quartgate; hit")
    purged = admin.post("/admin/cache/purge?route=cached&path=/fresh-purge/a")
    assert purged.status_code == 200 and purged.json()["purged"] == 1
    assert get("/fresh-purge/a").text == "/fresh-purge/a #2"
    assert get("/fresh-purge/b").text == "/fresh-purge/b #1"
    assert admin.post("/admin/cache/purge").json()["purged"] >= 3  # everything
    assert get("/fresh-kept").text == "/fresh-kept #2"
    assert admin.post("/admin/cache/purge", token=None).status_code == 401
    assert admin.post("/admin/cache/purge?route=nope").status_code == 404
    assert admin.get("/admin/cache/purge").status_code == 405


def test_a_purge_reaches_every_worker_through_the_control_file(tmp_path: Path) -> None:
    """Two workers' views of the shared decisions: one records, the other reads it."""
    first, second = Control(str(tmp_path)), Control(str(tmp_path))
    with first.change():
        number = first.purge("cached", "/a")
    assert second.poll() and second.purges == [(number, "cached", "/a")]
    with second.change():
        second.purge("", "")
    assert first.poll() and [p[0] for p in first.purges] == [number, number + 1]


async def test_waiting_requests_fetch_for_themselves_when_nothing_was_stored(
    gateway: tuple[GatewayProcess, Admin], origin: tuple[Origin, ScriptedUpstream]
) -> None:
    async with httpx.AsyncClient(base_url=gateway[0].url, timeout=30) as client:
        responses = await asyncio.gather(*(client.get("/slow-private") for _ in range(10)))
    assert sorted(r.text for r in responses) == sorted(f"/slow-private #{n}" for n in range(1, 11))
    assert seen(origin, "/slow-private") == 10


# ---- the rules alone ---------------------------------------------------------------------


def test_what_may_be_stored() -> None:
    def why(
        status: int,
        response: list[tuple[bytes, bytes]],
        request: list[tuple[bytes, bytes]] | None = None,
    ) -> str | None:
        cc = rfc9111.directives(rfc9111.header(response, b"cache-control"))
        return rfc9111.storable(status, request or [], response, cc, heuristic=False)

    fresh = [(b"cache-control", b"max-age=60")]
    assert why(200, fresh) is None
    assert why(206, fresh) == "partial, interim or not-modified response"
    assert why(304, fresh) == "partial, interim or not-modified response"
    assert why(302, [(b"etag", b'"x"')]) == "status 302 without explicit freshness"
    assert why(302, fresh) is None
    assert why(200, []) == "no freshness and no validator"
    assert why(200, [(b"last-modified", b"Mon, 01 Jan 2024 00:00:00 GMT")]) is None
    assert why(200, fresh, [(b"cache-control", b"no-store")]) == "no-store"
    assert why(200, [(b"cache-control", b'private="x", max-age=60')]) == "private"
    assert why(200, [*fresh, (b"vary", b"accept, *")]) == "Vary: *"
    assert why(200, fresh, [(b"authorization", b"Bearer a")]) is not None
    assert why(200, [(b"cache-control", b"s-maxage=60")], [(b"authorization", b"x")]) is None


def test_freshness_and_age() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now, usegmt=True).encode()
    expires = email.utils.formatdate(now + 120, usegmt=True).encode()

    def lifetime(headers: list[tuple[bytes, bytes]]) -> float:
        cc = rfc9111.directives(rfc9111.header(headers, b"cache-control"))
        return rfc9111.freshness_lifetime(headers, cc, now, heuristic=False)

    assert lifetime([(b"cache-control", b"max-age=60, s-maxage=10")]) == 10
    assert lifetime([(b"date", date), (b"expires", expires)]) == 120
    assert lifetime([(b"date", date), (b"expires", b"0")]) == 0  # invalid: expired
    assert lifetime([(b"cache-control", b"max-age=abc")]) == 0
    headers = [(b"date", date), (b"age", b"30")]
    assert rfc9111.initial_age(headers, now - 2, now) == 32  # its Age plus the delay
    assert rfc9111.directives(b'no-cache="a, b", MAX-AGE=5') == {"no-cache": "a, b", "max-age": "5"}


def test_the_store_evicts_least_recently_used_and_purges_under_a_path() -> None:
    def entry(body: bytes) -> Entry:
        return Entry.of(
            200, [(b"cache-control", b"max-age=60")], body, [], 0.0, 0.0, heuristic=False
        )

    one = entry(b"x" * 1000).size + len("r") + len("h") + len("/a") + 64  # with its key
    store = MemoryStore(max_size=3 * one)
    for name in (b"/a", b"/b", b"/c"):
        store.put(("r", b"h", name), entry(b"x" * 1000))
    store.variants(("r", b"h", b"/a"))  # /a used: /b is now the oldest
    store.put(("r", b"h", b"/d"), entry(b"x" * 1000))
    assert [bool(store.variants(("r", b"h", n))) for n in (b"/a", b"/b", b"/c", b"/d")] == [
        True, False, True, True,
    ]  # fmt: skip
    for target in (b"/items", b"/items/7", b"/items?page=2", b"/itemsx"):
        store.put(("r", b"h", target), entry(b"y"))
    assert store.purge("r", b"/items") == 3
    assert store.variants(("r", b"h", b"/itemsx"))
    assert memory_store(CacheStoreSettings()) is memory_store(CacheStoreSettings())
