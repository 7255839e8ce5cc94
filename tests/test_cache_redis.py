"""``[cache] store = "redis"``: two gateways (separate processes, as two instances would be)
share one real redis-server; what one stored the other serves, a purge through one reaches
both, a body spanning several chunks streams back whole, and Redis going away turns hits
into misses, never into errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.cache.redis_store import RedisStore
from gateway.cache.store import Entry
from gateway.policies.ratelimit import make_redis
from tests.support.cache_origin import Origin
from tests.support.edge import RedisServer
from tests.support.gateway import GatewayProcess
from tests.support.observability import Admin, wait_until
from tests.support.scripted import ScriptedUpstream
from upstreams.errors import UpstreamProtocolError

CONFIG = """
{admin}
[redis]
url = "{redis}"

[cache]
store = "redis"
key_prefix = "test:cache:"

[upstreams.origin]
targets = ["{url}"]

[[routes]]
name = "cached"
path = "/"
upstream = "origin"
[routes.cache]
max_entry_size = 262144
"""


class Pair:
    def __init__(self, origin: Origin, one: GatewayProcess, two: GatewayProcess, admin: Admin):
        self.origin = origin
        # One public name, as a load balancer in front of both would send (the cache key
        # is the host and request-target).
        host = {"host": "api.example.test"}
        self.one = httpx.Client(base_url=one.url, timeout=15, headers=host)
        self.two = httpx.Client(base_url=two.url, timeout=15, headers=host)
        self.gateways = (one, two)
        self.admin = admin  # the first gateway's


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Pair, RedisServer]]:
    redis = RedisServer(tmp_path).start()
    origin = Origin()
    with ScriptedUpstream(origin) as upstream:
        admin = Admin()
        configs = []
        for name, section in (("one", admin.section()), ("two", "")):
            config = tmp_path / f"{name}.toml"
            text = CONFIG.format(admin=section, redis=redis.url, url=upstream.url)
            config.write_text(text)
            configs.append(config)
        one, two = (GatewayProcess(config).start() for config in configs)
        both = Pair(origin, one, two, admin)
        try:
            yield both, redis
        finally:
            both.one.close()
            both.two.close()
            one.stop()
            two.stop()
            redis.stop()


def hit(response: httpx.Response) -> bool:
    return response.headers["cache-status"].startswith("quartgate; hit")


def stored(client: httpx.Client, path: str) -> None:
    """Wait until ``client``'s gateway serves ``path`` from Redis: it has been written
    there (the write follows the response that carried it)."""
    wait_until(lambda: hit(client.get(path)) or None, what=f"{path} stored in Redis")


def test_what_one_gateway_stored_the_other_serves(pair: tuple[Pair, RedisServer]) -> None:
    gateways, _ = pair
    first = gateways.one.get("/fresh")
    assert first.headers["cache-status"] == "quartgate; fwd=miss; stored"
    stored(gateways.one, "/fresh")
    served = gateways.two.get("/fresh")
    assert hit(served) and served.text == "/fresh #1"
    assert gateways.origin.seen["/fresh"] == 1


def test_a_body_of_several_chunks_streams_back_whole(pair: tuple[Pair, RedisServer]) -> None:
    gateways, _ = pair
    first = gateways.one.get("/bigger")
    stored(gateways.one, "/bigger")
    served = gateways.two.get("/bigger")
    assert hit(served)
    assert served.content == first.content and len(served.content) > 3 * 65536
    assert served.headers["content-length"] == str(len(first.content))
    assert gateways.origin.seen["/bigger"] == 1


def test_a_purge_through_one_gateway_reaches_the_other(pair: tuple[Pair, RedisServer]) -> None:
    gateways, _ = pair
    gateways.one.get("/fresh-shared")
    stored(gateways.one, "/fresh-shared")
    assert hit(gateways.two.get("/fresh-shared"))
    purged = gateways.admin.post("/admin/cache/purge?route=cached&path=/fresh-shared")
    assert purged.status_code == 200 and purged.json()["purged"] >= 1
    assert gateways.two.get("/fresh-shared").text == "/fresh-shared #2"


def test_redis_down_is_a_miss_not_an_error(pair: tuple[Pair, RedisServer]) -> None:
    gateways, redis = pair
    gateways.one.get("/fresh-down")
    stored(gateways.one, "/fresh-down")
    redis.stop()
    for _ in range(3):
        response = gateways.one.get("/fresh-down")
        assert response.status_code == 200
    assert gateways.origin.seen["/fresh-down"] == 4  # every one a miss, all answered
    log = gateways.gateways[0].log
    wait_until(
        lambda: "cache: Redis lookup failed" in log.read_text() or None,
        what="the log line saying Redis failed",
    )


def test_a_redis_store_without_a_redis_table_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[cache]\nstore = "redis"\n[upstreams.u]\ntargets = ["http://127.0.0.1:1"]\n'
        '[[routes]]\nname = "r"\npath = "/"\nupstream = "u"\n[routes.cache]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"{config}: cache.store: 'redis' needs a [redis] section" in done.stderr


def test_a_cache_on_an_in_process_route_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[upstreams.app]\napp = "tests.support.inprocess_apps:bare_asgi"\n'
        '[[routes]]\nname = "r"\npath = "/"\nupstream = "app"\n[routes.cache]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert 'routes[0] "r".cache: is for HTTP upstreams' in done.stderr


async def test_a_stored_body_gone_mid_stream_is_an_error_not_a_short_body(tmp_path: Path) -> None:
    """Replaced, purged or expired while a client reads it: the client must see a cut
    response (the dispatch aborts it), never a shorter body that ends cleanly."""
    redis = RedisServer(tmp_path).start()
    client = make_redis(redis.url, 2.0)
    try:
        store = RedisStore(client, "test:cut:")
        body = bytes(range(256)) * 256 * 5 + b"!"  # just over five 64 KiB chunks: two reads
        key = ("r", b"http://h", b"/cut")
        fresh = [(b"cache-control", b"max-age=60")]
        await store.save(key, Entry.of(200, fresh, body, [], 0.0, 0.0, heuristic=False))
        entry = await store.lookup(key, [])
        assert entry is not None and entry.chunks == 6
        read = bytearray()
        with pytest.raises(UpstreamProtocolError, match="gone while being served"):
            async for chunk in store.body(entry):
                read += chunk
                if len(read) == 4 * 65536:  # the first read's four chunks are out
                    await client.delete(entry.body_key)
        assert len(read) == 4 * 65536
        whole = await store.lookup(key, [])
        assert whole is not None
        await store.save(key, Entry.of(200, fresh, body, [], 0.0, 0.0, heuristic=False))
        again = await store.lookup(key, [])
        assert again is not None
        assert b"".join([c async for c in store.body(again)]) == body
    finally:
        await client.aclose()
        redis.stop()
