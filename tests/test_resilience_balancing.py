"""Unit tests for the pure logic of resilience: balancers, breaker, retry budget, config."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from upstreams.balancer import Balancer, hash_bytes, make_balancer
from upstreams.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSpec
from upstreams.retry import RetryBudget, RetrySpec, backoff
from upstreams.spec import TargetSpec
from upstreams.target import Target


def targets(breaker: BreakerSpec | None = None, **weights: int) -> list[Target]:
    """Targets named by host (``a``, ``b``...) over a stand-in sender that is never called."""
    return [
        Target(SimpleNamespace(target=TargetSpec("http", name, 80, w)), "up", breaker)  # type: ignore[arg-type]
        for name, w in weights.items()
    ]


def names(balancer: Balancer, count: int, key: int = 0, avoid: Any = ()) -> list[str]:
    picks = [balancer.pick(key, avoid) for _ in range(count)]
    return [p.spec.host if p is not None else "-" for p in picks]


def test_round_robin_skips_targets_that_are_down_and_avoided() -> None:
    a, b, c = items = targets(a=1, b=1, c=1)
    rr = make_balancer("round_robin", items)
    assert names(rr, 3) == ["a", "b", "c"]
    b.healthy = False
    b.refresh()
    assert "b" not in names(rr, 6)
    assert names(rr, 2, avoid=[a]) == ["c", "c"]
    a.drained = c.drained = True
    a.refresh()
    c.refresh()
    assert names(rr, 1) == ["-"]  # nothing up: the upstream answers 503


def test_retry_goes_back_to_a_tried_target_when_it_is_the_only_one_up() -> None:
    a, b = items = targets(a=1, b=1)
    b.healthy = False
    b.refresh()
    for kind in ("round_robin", "weighted", "least_outstanding", "hash"):
        balancer = make_balancer(kind, items)
        assert names(balancer, 1, avoid=[a]) == ["a"], kind


def test_least_outstanding_prefers_idle_targets_and_weights() -> None:
    a, b, c = items = targets(a=1, b=1, c=2)
    lo = make_balancer("least_outstanding", items)
    a.outstanding, b.outstanding, c.outstanding = 3, 0, 3
    assert names(lo, 1) == ["b"]
    b.outstanding = 2  # scores (n+1)/w: a 4, b 3, c 2
    assert names(lo, 1) == ["c"]
    a.outstanding = b.outstanding = c.outstanding = 0
    assert Counter(names(lo, 40)) == {"c": 40}  # idle: the heaviest wins every tie


def test_hash_is_sticky_and_consistent_when_a_target_is_added() -> None:
    ten = targets(**{f"t{i}": 1 for i in range(10)})
    eleven = [*ten, *targets(t10=1)]
    before = make_balancer("hash", ten)
    after = make_balancer("hash", eleven)
    keys = [hash_bytes(f"client-{i}".encode()) for i in range(2000)]
    first = [before.pick(k, ()) for k in keys]
    assert first == [before.pick(k, ()) for k in keys]  # the same key, the same target
    moved = sum(
        1
        for k, old in zip(keys, first, strict=True)
        if after.pick(k, ()).url != old.url  # type: ignore[union-attr]
    )
    assert 0 < moved < 2000 * 0.15  # about 1/11 of the keys move, not most of them
    spread = Counter(t.url for t in first if t is not None)
    assert len(spread) == 10 and min(spread.values()) > 2000 / 10 / 3


def test_hash_hands_a_down_targets_keys_to_others_and_takes_them_back() -> None:
    items = targets(a=1, b=1, c=1)
    ring = make_balancer("hash", items)
    keys = [hash_bytes(str(i).encode()) for i in range(300)]
    owners = {k: ring.pick(k, ()) for k in keys}
    down = items[0]
    down.healthy = False
    down.refresh()
    for k in keys:
        picked = ring.pick(k, ())
        assert picked is not down
        if owners[k] is not down:
            assert picked is owners[k]  # only the down target's keys move
    down.healthy = True
    down.refresh()
    assert all(ring.pick(k, ()) is owners[k] for k in keys)


def test_weighted_balancer_skips_a_target_that_is_down() -> None:
    items = targets(a=5, b=1, c=1)
    a = items[0]
    balancer = make_balancer("weighted", items)
    a.healthy = False
    a.refresh()
    assert sorted(names(balancer, 4)) == ["b", "b", "c", "c"]


async def test_breaker_ejects_backs_off_and_recovers_through_half_open() -> None:
    spec = BreakerSpec(consecutive_failures=3, failure_rate=0, ejection_time=0.05)
    (target,) = targets(spec, a=1)
    breaker = target.breaker
    assert breaker is not None
    loop = asyncio.get_running_loop()
    for _ in range(2):
        breaker.failure(loop.time(), "reset")
    breaker.success(loop.time())  # a success resets the count
    for _ in range(2):
        breaker.failure(loop.time(), "reset")
    assert breaker.state == CLOSED and target.up
    breaker.failure(loop.time(), "reset")
    assert breaker.state == OPEN and not target.up
    first_reopen = breaker.reopens_at - loop.time()
    while breaker.state == OPEN:
        await asyncio.sleep(0.01)
    assert breaker.state == HALF_OPEN and target.up
    breaker.dispatch()  # the one probe allowed
    assert not target.up
    breaker.failure(loop.time(), "reset")  # probe failed: ejected for twice as long
    assert breaker.state == OPEN
    assert breaker.reopens_at - loop.time() > first_reopen * 1.5
    while breaker.state == OPEN:
        await asyncio.sleep(0.01)
    breaker.dispatch()
    breaker.success(loop.time())
    assert breaker.state == CLOSED and target.up
    breaker.close()


async def test_breaker_trips_on_failure_rate_over_the_window() -> None:
    spec = BreakerSpec(consecutive_failures=0, failure_rate=0.5, min_requests=10)
    (target,) = targets(spec, a=1)
    breaker = target.breaker
    assert breaker is not None
    now = asyncio.get_running_loop().time()
    for _ in range(4):
        breaker.success(now)
        breaker.failure(now, "status 503")
        assert breaker.state == CLOSED  # never two failures in a row, under min_requests
    breaker.success(now)
    breaker.failure(now, "status 503")  # 5 of 10 failed
    assert breaker.state == OPEN
    breaker.close()


def test_retry_budget_caps_retries_to_a_fraction_of_requests() -> None:
    budget = RetryBudget(0.2, 0.0)
    now = 1000.0
    for _ in range(50):
        budget.request(now)
    allowed = sum(budget.try_retry(now) for _ in range(50))
    assert allowed == 10
    later = now + RetryBudget.WINDOW + 1  # the window slid past: no requests, no retries
    assert not budget.try_retry(later)
    floor = RetryBudget(0.0, 1.0)
    assert sum(floor.try_retry(now) for _ in range(20)) == 10  # 1/s over a 10 s window


def test_backoff_is_jittered_exponential_and_capped() -> None:
    spec = RetrySpec(backoff_base=0.1, backoff_max=0.3)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (8, 0.3)):
        delays = [backoff(spec, retry) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jitter, not a fixed delay


CONFIG = """
[upstreams.api]
targets = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
balancer = "hash"
hash_on = "header:X-User"
max_requests = 100
[upstreams.api.health]
path = "/healthz"
interval = 1
expected_status = [200, 204]
[upstreams.api.breaker]
consecutive_failures = 3
[[routes]]
path = "/"
upstream = "api"
timeout = 2.5
[routes.retry]
attempts = 3
retry_on = ["reset", "503"]
methods = ["GET", "post"]
"""


def test_config_reads_every_resilience_key() -> None:
    import tomllib

    config = parse_config(tomllib.loads(CONFIG))
    spec = config.upstreams["api"]
    assert (spec.balancer, spec.hash_on, spec.max_requests) == ("hash", "header:X-User", 100)
    assert spec.health is not None and spec.health.path == "/healthz"
    assert spec.health.expected_status == (200, 204) and spec.health.interval == 1.0
    assert spec.breaker == BreakerSpec(consecutive_failures=3)
    policies = config.policies_of(config.routes[0])
    assert policies.timeout == 2.5
    assert policies.retry == RetrySpec(
        attempts=3, retry_on=("reset", "503"), methods=("GET", "POST")
    )


def test_config_rejects_bad_resilience_keys_with_reasons() -> None:
    import tomllib

    bad = CONFIG.replace('balancer = "hash"', 'balancer = "random"')
    bad = bad.replace('retry_on = ["reset", "503"]', 'retry_on = ["reset", "404", "oops"]')
    bad = bad.replace("consecutive_failures = 3", "consecutive_failures = 3\nejected = 1")
    bad = bad.replace("interval = 1", "interval = 0")
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(bad), "gw.toml")
    text = str(caught.value)
    assert "gw.toml: upstreams.api.balancer: must be one of round_robin, weighted," in text
    assert "gw.toml: routes[0].retry.retry_on[1]: '404' is not one of" in text
    assert "routes[0].retry.retry_on[2]" in text
    assert "gw.toml: upstreams.api.breaker.ejected: unknown key" in text
    assert "gw.toml: upstreams.api.health.interval: must be greater than 0" in text
