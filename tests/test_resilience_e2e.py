"""End to end: balancing, health checks, breaker, retries, deadlines and caps, through a real
gateway, with upstreams that are killed, slowed, reset and restarted during the test."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faulty import FaultyUpstream
from tests.support.gateway import GatewayProcess
from tests.support.observability import Admin, value
from tests.support.observability import wait_until as wait_for
from tests.test_access_log import access_log, read_lines

Start = Callable[..., GatewayProcess]


@pytest.fixture
def faulty() -> Iterator[Callable[[str], FaultyUpstream]]:
    made: list[FaultyUpstream] = []

    def make(name: str) -> FaultyUpstream:
        server = FaultyUpstream(name).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll with a deadline: for state the gateway changes in the background."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def served_by(client: httpx.AsyncClient, count: int, path: str = "/api/x") -> list[str]:
    names = []
    for _ in range(count):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        names.append(response.headers["x-served-by"])
    return names


def config(*targets: FaultyUpstream, upstream: str = "", route: str = "") -> str:
    urls = ", ".join(f'"{t.url}"' for t in targets)
    return f"""
[upstreams.api]
targets = [{urls}]
{upstream}

[[routes]]
name = "api"
path = "/api"
upstream = "api"
{route}
"""


async def test_killed_target_is_skipped_at_once_and_used_again_after_restart(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    gateway = make_gateway(config(a, b))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert Counter(await served_by(client, 4)) == {"a": 2, "b": 2}
        a.kill()
        # No retry settings at all: a refused connection is tried on the other target, for
        # every method, since the request never left the gateway.
        assert set(await served_by(client, 6)) == {"b"}
        posted = await client.post("/api/x", content=b"payload")
        assert posted.status_code == 200 and posted.headers["x-served-by"] == "b"
        a.start()
        assert Counter(await served_by(client, 4)) == {"a": 2, "b": 2}


async def test_single_killed_target_is_502_then_served_after_restart(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a = faulty("a")
    gateway = make_gateway(config(a))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.kill()
        response = await client.get("/api/x")
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_unreachable"
        a.start()
        assert await served_by(client, 2) == ["a", "a"]


async def test_active_health_checks_take_targets_out_and_back(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    health = """
[upstreams.api.health]
path = "/health"
interval = 0.05
timeout = 1
unhealthy_threshold = 2
healthy_threshold = 2
"""
    gateway = make_gateway(config(a, b, upstream=health))

    async def probes_seen(server: FaultyUpstream, count: int) -> None:
        # The next probe starts only after the previous round's results were applied.
        start = server.health_checks
        await wait_until(lambda: server.health_checks >= start + count + 1, "health checks")

    async with httpx.AsyncClient(base_url=gateway.url) as client:
        await probes_seen(a, 1)
        assert Counter(await served_by(client, 4)) == {"a": 2, "b": 2}
        a.health_status = 500
        await probes_seen(a, 2)
        assert set(await served_by(client, 6)) == {"b"}
        b.health_status = 503
        await probes_seen(b, 2)
        response = await client.get("/api/x")
        assert response.status_code == 503
        assert response.json()["error"] == "no_healthy_upstream"
        assert response.headers["retry-after"] == "1"
        assert a.served() == 2  # fast: no request went to an unhealthy target
        a.health_status = 200
        await probes_seen(a, 2)
        assert set(await served_by(client, 3)) == {"a"}
        # A killed target fails its probes (connect errors) like a bad status.
        a.kill()
        b.health_status = 200
        await probes_seen(b, 2)
        assert set(await served_by(client, 4)) == {"b"}
    # Losing a target is a WARNING; getting it back is news, not trouble: INFO.
    lines = gateway.logs().splitlines()
    assert any(
        " WARNING " in line and f"{a.url}" in line and "is unhealthy" in line for line in lines
    )
    recovered = [line for line in lines if "is healthy again" in line]
    assert recovered and all(" INFO " in line for line in recovered)


async def test_breaker_ejects_a_failing_target_and_half_open_brings_it_back(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    upstream = """
[upstreams.api.breaker]
consecutive_failures = 2
ejection_time = 0.3
"""
    route = """
[routes.retry]
attempts = 2
backoff_base = 0
"""
    gateway = make_gateway(config(a, b, upstream=upstream, route=route))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.mode = "status"  # 503s
        # Every client request succeeds (the 503s are retried on b) and, once two 503s in a
        # row ejected a, a gets no more traffic.
        assert set(await served_by(client, 10)) == {"b"}
        assert a.served() == 2
        a.mode = "ok"
        names: list[str] = []

        async def a_serves_again() -> bool:
            names.extend(await served_by(client, 1))
            return names[-1] == "a"

        deadline = time.monotonic() + 10
        while not await a_serves_again():  # after 0.3 s a half-open probe goes to a
            assert time.monotonic() < deadline, "a never came back"
            await asyncio.sleep(0.02)
        assert Counter(await served_by(client, 4)) == {"a": 2, "b": 2}  # closed again


async def test_all_targets_ejected_answers_503_with_retry_after(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a = faulty("a")
    upstream = """
[upstreams.api.breaker]
consecutive_failures = 1
ejection_time = 30
"""
    gateway = make_gateway(config(a, upstream=upstream))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.mode = "reset"
        first = await client.get("/api/x")
        assert first.status_code == 502 and first.json()["error"] == "upstream_reset"
        second = await client.get("/api/x", headers={"x-request-id": "ejected-1"})
        assert second.status_code == 503
        assert second.json() == {
            "error": "no_healthy_upstream",
            "detail": second.json()["detail"],
            "request_id": "ejected-1",
        }
        assert 25 <= int(second.headers["retry-after"]) <= 30
        assert a.served() == 1  # answered fast, without touching the target


async def test_retries_only_idempotent_methods_and_never_after_the_head(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a = faulty("a")
    route = """
[routes.retry]
attempts = 3
backoff_base = 0.001
"""
    gateway = make_gateway(config(a, route=route))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.mode = "reset"  # closes before any response byte
        response = await client.get("/api/x")
        assert response.status_code == 502 and response.json()["error"] == "upstream_reset"
        assert a.served() == 3  # three tries in all
        response = await client.post("/api/x", content=b"not idempotent")
        assert response.status_code == 502
        assert a.served() == 4  # a POST is tried once
        response = await client.put("/api/x", content=b"idempotent")
        assert a.served() == 7
        a.mode = "reset_mid_body"  # the head reached the client: never retried
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/api/x")
        assert a.served() == 8
        a.mode = "ok"
        assert await served_by(client, 1) == ["a"]


async def test_retry_on_status_goes_to_another_target(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    route = """
[routes.retry]
retry_on = ["503"]
"""
    gateway = make_gateway(config(a, b, route=route))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.mode = "status"
        a.status = 503
        assert set(await served_by(client, 6)) == {"b"}
        assert a.served() == 3  # round robin still sends a its share; each is retried on b
        a.status = 502  # not in this route's retry_on: passed through as the upstream said
        answers = [(await client.get("/api/x")).status_code for _ in range(2)]
        assert sorted(answers) == [200, 502]


async def test_retries_and_the_target_that_answered_reach_the_access_log_and_metrics(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream], tmp_path: Path
) -> None:
    # The upstream layer reports them on the response (or on the error), not on the request.
    a, b = faulty("a"), faulty("b")
    log = tmp_path / "access.log"
    admin = Admin()
    route = "[routes.retry]\nattempts = 3\nbackoff_base = 0\n"
    gateway = make_gateway(admin.section() + access_log(log) + config(a, b, route=route))
    a.mode = "reset"
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert await served_by(client, 2) == ["b", "b"]  # the one that started on a: retried
        b.mode = "reset"
        assert (await client.get("/api/x")).status_code == 502  # three tries: two retries
    answered, other, failed = (json.loads(line) for line in read_lines(log, 3))
    assert sorted([answered["retries"], other["retries"]]) == [0, 1]
    assert answered["upstream_target"] == other["upstream_target"] == b.url
    assert failed["retries"] == 2
    assert failed["upstream_target"] == ""  # a failure names no target, as before
    retries = "quartgate_upstream_retries_total"
    wait_for(lambda: value(admin.scrape(), retries, route="api", upstream="api") == 3)
    # By the exact status the client got, per upstream (Envoy's upstream_rq_<code>).
    samples = admin.scrape()
    answered_by = "quartgate_upstream_responses_total"
    assert value(samples, answered_by, upstream="api", status="200") == 2
    assert value(samples, answered_by, upstream="api", status="502") == 1


async def test_retry_budget_caps_retries(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a = faulty("a")
    route = """
[routes.retry]
attempts = 3
backoff_base = 0
budget = 0.5
min_retries_per_second = 0
"""
    gateway = make_gateway(config(a, route=route))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.mode = "status"
        for _ in range(10):
            assert (await client.get("/api/x")).status_code == 503
        # Without a budget 10 requests would make 30 tries; with it, retries <= half of 10.
        assert a.served() == 15


async def test_route_deadline_is_504_and_per_try_timeout_moves_on(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    text = f"""
[upstreams.api]
targets = ["{a.url}", "{b.url}"]

[upstreams.one]
targets = ["{a.url}"]

[[routes]]
path = "/api"
upstream = "api"
timeout = 5
[routes.retry]
retry_on = ["timeout"]
per_try_timeout = 0.2

[[routes]]
path = "/deadline"
upstream = "one"
timeout = 0.3
"""
    gateway = make_gateway(text)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        a.mode = "slow"
        a.delay = 3
        assert set(await served_by(client, 4)) == {"b"}  # a's tries time out, b answers
        response = await client.get("/deadline/x", headers={"x-request-id": "late"})
        assert response.status_code == 504
        assert response.json()["error"] == "route_timeout"
        assert response.json()["request_id"] == "late"


async def test_max_requests_caps_concurrency_with_503(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a = faulty("a")
    gateway = make_gateway(config(a, upstream="max_requests = 2"))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        slow = [asyncio.create_task(client.get("/api/x?delay=1")) for _ in range(2)]
        await wait_until(lambda: a.served() == 2, "two requests in flight")
        response = await client.get("/api/x")
        assert response.status_code == 503
        assert response.json()["error"] == "upstream_overloaded"
        assert response.headers["retry-after"] == "1"
        assert [(await t).status_code for t in slow] == [200, 200]
        assert await served_by(client, 1) == ["a"]  # the slots were given back


async def test_hash_balancer_keeps_each_key_on_one_target(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b, c = faulty("a"), faulty("b"), faulty("c")
    gateway = make_gateway(config(a, b, c, upstream='balancer = "hash"\nhash_on = "header:x-user"'))
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        homes: dict[str, str] = {}
        for user in range(30):
            seen = {
                (await client.get("/api/x", headers={"x-user": f"u{user}"})).headers["x-served-by"]
                for _ in range(3)
            }
            assert len(seen) == 1
            homes[f"u{user}"] = seen.pop()
        assert len(set(homes.values())) == 3
        b.kill()  # b's keys move; everyone else's stay put
        for user, home in homes.items():
            got = (await client.get("/api/x", headers={"x-user": user})).headers["x-served-by"]
            assert got != "b"
            if home != "b":
                assert got == home


async def test_least_outstanding_avoids_a_target_busy_with_a_slow_request(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    gateway = make_gateway(config(a, b, upstream='balancer = "least_outstanding"'))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        a.mode = "slow"
        a.delay = 2
        slow: list[asyncio.Task[httpx.Response]] = []
        for _ in range(20):  # until one request is held by a (b answers at once)
            if a.waiting.is_set():
                break
            slow.append(asyncio.create_task(client.get("/api/x")))
            await asyncio.sleep(0.05)
        assert a.waiting.is_set()
        # a has a request in flight, b has none: round robin would alternate, this does not.
        assert set(await served_by(client, 8)) == {"b"}
        assert all(r.status_code == 200 for r in await asyncio.gather(*slow))


async def test_a_retry_line_carries_the_request_id(
    make_gateway: Start, faulty: Callable[[str], FaultyUpstream]
) -> None:
    a, b = faulty("a"), faulty("b")
    gateway = make_gateway(config(a, b, route='[routes.retry]\nretry_on = ["503"]\n'))
    a.mode = "status"
    a.status = 503
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        ids = [f"retry-line-{n}" for n in range(2)]  # round robin: one of them tries a first
        for request_id in ids:
            answer = await client.get("/api/x", headers={"x-request-id": request_id})
            assert answer.status_code == 200
    lines = wait_for(
        lambda: [line for line in gateway.logs().splitlines() if "; retry 1 of" in line],
        what="the retry line",
    )
    assert len(lines) == 1
    assert any(f"[{request_id}] upstream 'api': status 503 from" in lines[0] for request_id in ids)
