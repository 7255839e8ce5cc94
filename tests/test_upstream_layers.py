"""Each layer of an upstream's sender stack on its own, over a scripted inner sender.

No sockets: the inner sender answers from a script (a status, or an error to raise), so
each test shows one layer's rule. The composed stacks are tested against real servers in
test_pool.py, test_resilience_e2e.py and test_protocol_upstream.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from upstreams.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerSpec
from upstreams.errors import (
    NoHealthyTarget,
    PoolExhausted,
    RouteTimeout,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from upstreams.h1.framing import request_bytes, write_streamed_body
from upstreams.layers.counts import Capping, Counting
from upstreams.layers.per_try import Breaking, TryTimeout
from upstreams.layers.retrying import Retrying
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.retry import RetryPolicy, RetrySpec
from upstreams.sender import PoolStats, Sends, stack
from upstreams.spec import TargetSpec, UpstreamSpec
from upstreams.target import Target
from upstreams.upstream import Upstream

Outcome = int | UpstreamError | float  # a status, an error to raise, or seconds to hang


class Scripted:
    """A sender that answers each call with the next outcome of its script."""

    def __init__(self, *script: Outcome, url: str = "http://a", complete: bool = False) -> None:
        self.script = list(script)
        self.url = url
        self.complete = complete
        self.calls = 0
        self.closed = 0
        self.target = TargetSpec("http", url.removeprefix("http://"), 80)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.calls += 1
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(outcome, UpstreamError):
            raise outcome
        if isinstance(outcome, float):
            await asyncio.sleep(outcome)
            outcome = 200
        return UpstreamResponse(
            outcome, [], _empty(), self._aclose, b"", self.complete, sent_to=self.url
        )

    async def _aclose(self) -> None:
        self.closed += 1

    def stats(self) -> PoolStats | None:
        return None

    async def aclose(self) -> None:
        return None


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


def get(policy: RetryPolicy | None = None, body: Any = b"") -> UpstreamRequest:
    return UpstreamRequest(b"GET", b"/", [], body, 0, policy=policy)


def over(layer: Any, inner: Sends) -> Any:
    layer.inner = inner
    return layer


# ---- stacking ------------------------------------------------------------------------------


def test_stack_lists_layers_top_to_bottom_and_leaves_out_none() -> None:
    bottom = Scripted(200)
    top, below = Capping("u", 1), Counting(Target(bottom, "u", None))
    assert stack(top, None, below, bottom=bottom) is top
    assert top.inner is below and below.inner is bottom
    assert stack(None, bottom=bottom) is bottom


def test_upstream_composes_only_what_it_configures() -> None:
    one = (TargetSpec("http", "a", 80),)
    plain = Upstream(UpstreamSpec("p", one))
    assert isinstance(plain._sender, Retrying)
    (target,) = plain.targets
    assert isinstance(target.tries, TryTimeout) and target.tries.inner is target.sender
    full = Upstream(
        UpstreamSpec(
            "f",
            one,
            balancer="least_outstanding",
            max_requests=5,
            breaker=BreakerSpec(),
        )
    )
    assert isinstance(full._sender, Capping) and isinstance(full._sender.inner, Retrying)
    tries = full.targets[0].tries
    assert isinstance(tries, Breaking)
    assert isinstance(tries.inner, Counting)
    assert isinstance(tries.inner.inner, TryTimeout)
    assert tries.inner.inner.inner is full.targets[0].sender


# ---- capping -------------------------------------------------------------------------------


async def test_capping_refuses_beyond_max_and_holds_the_slot_until_the_body_ends() -> None:
    cap = over(Capping("u", 1), Scripted(200))
    response = await cap.send(get())
    assert cap.in_flight == 1
    with pytest.raises(UpstreamOverloaded, match="max_requests = 1"):
        await cap.send(get())
    await response.aclose()
    await response.aclose()  # closing twice gives the slot back once
    assert cap.in_flight == 0
    await (await cap.send(get())).aclose()
    assert cap.in_flight == 0


async def test_capping_releases_at_once_for_a_complete_response_and_on_failure() -> None:
    cap = over(Capping("u", 1), Scripted(200, complete=True))
    await cap.send(get())
    assert cap.in_flight == 0
    failing = over(Capping("u", 1), Scripted(UpstreamConnectError("refused")))
    with pytest.raises(UpstreamConnectError):
        await failing.send(get())
    assert failing.in_flight == 0


async def test_capping_releases_when_the_request_is_cancelled() -> None:
    cap = over(Capping("u", 1), Scripted(10.0))
    task = asyncio.ensure_future(cap.send(get()))
    await asyncio.sleep(0)
    assert cap.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cap.in_flight == 0


async def test_a_request_the_cap_refuses_still_counts_in_its_route_retry_budget() -> None:
    # budget 0.5, no floor: one retry is allowed per two requests of the route
    policy = RetryPolicy(RetrySpec(budget=0.5, min_retries_per_second=0.0))
    budget = policy.budget
    assert budget is not None
    cap = over(Capping("u", 1), Scripted(200))
    held = await cap.send(get(policy))  # holds the one slot (Retrying counts this request)
    budget.request(asyncio.get_running_loop().time())
    with pytest.raises(UpstreamOverloaded):
        await cap.send(get(policy))  # refused: still one of the route's requests
    assert budget.try_retry(asyncio.get_running_loop().time())  # 1 <= 0.5 * 2
    await held.aclose()


# ---- counting ------------------------------------------------------------------------------


async def test_counting_counts_each_try_until_its_body_ends_or_it_fails() -> None:
    inner = Scripted(200, UpstreamProtocolError("reset"))
    target = Target(inner, "u", None)
    count = over(Counting(target), inner)
    response = await count.send(get())
    assert target.outstanding == 1
    with pytest.raises(UpstreamProtocolError):
        await count.send(get())
    assert target.outstanding == 1
    await response.aclose()
    assert target.outstanding == 0 and inner.closed == 1


# ---- breaking ------------------------------------------------------------------------------


async def test_breaking_counts_errors_and_failure_statuses_but_not_a_full_pool() -> None:
    spec = BreakerSpec(consecutive_failures=3, failure_rate=0, ejection_time=60)
    breaker = Breaker(spec, "u/a", lambda: None)
    inner = Scripted(PoolExhausted("full"), UpstreamConnectError("refused"), 503, 500)
    layer = over(Breaking(breaker), inner)
    with pytest.raises(PoolExhausted):  # says nothing about the target
        await layer.send(get())
    with pytest.raises(UpstreamConnectError):
        await layer.send(get())
    assert (await layer.send(get())).status == 503
    assert (await layer.send(get())).status == 500  # the application's answer: a success
    assert breaker.state == CLOSED
    inner.script = [UpstreamConnectError("refused"), 503, 502]
    for _ in range(3):
        with contextlib.suppress(UpstreamConnectError):
            await layer.send(get())
    assert breaker.state == OPEN
    breaker.close()


async def test_breaking_gives_back_a_half_open_probe_when_the_try_is_abandoned() -> None:
    changes: list[bool] = []
    spec = BreakerSpec(consecutive_failures=1, failure_rate=0, ejection_time=0.01)
    breaker = Breaker(spec, "u/a", lambda: changes.append(breaker.admits))
    breaker.failure(asyncio.get_running_loop().time(), "test")
    await asyncio.sleep(0.05)
    assert breaker.state == HALF_OPEN and breaker.admits
    layer = over(Breaking(breaker), Scripted(10.0))
    task = asyncio.ensure_future(layer.send(get()))
    await asyncio.sleep(0)
    assert not breaker.admits  # the one probe is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.admits and breaker.state == HALF_OPEN
    breaker.close()


# ---- per-try timeout -----------------------------------------------------------------------


async def test_try_timeout_adds_no_frame_without_a_per_try_timeout() -> None:
    inner = Scripted(200)
    layer = over(TryTimeout("http://a"), inner)
    sending = layer.send(get())
    assert isinstance(sending, Coroutine)
    assert sending.cr_code is Scripted.send.__code__  # the inner coroutine itself
    assert (await sending).status == 200


async def test_try_timeout_is_a_read_timeout_of_the_target() -> None:
    policy = RetryPolicy(RetrySpec(per_try_timeout=0.01))
    layer = over(TryTimeout("http://a"), Scripted(10.0))
    with pytest.raises(UpstreamTimeout) as info:
        await layer.send(get(policy))
    assert info.value.phase == "read" and info.value.sent_to == "http://a"


# ---- retrying ------------------------------------------------------------------------------


def retrying(*senders: Scripted, breaker: BreakerSpec | None = None) -> Retrying:
    """Retrying over targets whose tries go straight to scripted senders."""
    spec = UpstreamSpec("u", tuple(s.target for s in senders), breaker=breaker)
    upstream = Upstream(spec)  # for its balancer; the targets' stacks are replaced
    for target, sender in zip(upstream.targets, senders, strict=True):
        target.tries = sender
    sender = upstream._sender
    assert isinstance(sender, Retrying)
    return sender


NO_BACKOFF = RetrySpec(attempts=3, backoff_base=0.0, backoff_max=0.0)


async def test_one_target_without_a_policy_is_one_try_without_a_frame() -> None:
    a = Scripted(UpstreamConnectError("refused"), url="http://a")
    sending = retrying(a).send(get())
    assert isinstance(sending, Coroutine) and sending.cr_code is Scripted.send.__code__
    with pytest.raises(UpstreamConnectError) as info:
        await sending
    assert info.value.retries == 0 and a.calls == 1


async def test_a_failed_connect_is_tried_once_on_another_target_without_a_policy() -> None:
    a = Scripted(UpstreamConnectError("refused"), url="http://a")
    b = Scripted(200, url="http://b")
    layer = retrying(a, b)
    response = await layer.send(UpstreamRequest(b"POST", b"/", [], b"x", 1))
    assert (response.status, response.sent_to, response.retries) == (200, "http://b", 1)
    assert (a.calls, b.calls) == (1, 1)
    # A reset is not a connect failure: without a route policy it is not retried.
    a.script = [UpstreamProtocolError("reset")]
    with pytest.raises(UpstreamProtocolError) as info:
        for _ in range(2):  # round robin: one of two requests starts on a
            await layer.send(get())
    assert info.value.retries == 0


async def test_a_streamed_body_is_never_retried() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x"

    a = Scripted(UpstreamConnectError("refused"), url="http://a")
    b = Scripted(200, url="http://b")
    with pytest.raises(UpstreamConnectError):
        await retrying(a, b).send(get(body=body()))
    assert b.calls == 0


async def test_retries_follow_the_policy_and_failures_carry_the_count() -> None:
    a = Scripted(UpstreamProtocolError("reset"), url="http://a")
    policy = RetryPolicy(NO_BACKOFF)
    with pytest.raises(UpstreamProtocolError) as info:
        await retrying(a).send(get(policy))
    assert a.calls == 3 and info.value.retries == 2
    post = UpstreamRequest(b"POST", b"/", [], b"x", 1, policy=policy)
    with pytest.raises(UpstreamProtocolError):
        await retrying(a).send(post)  # not idempotent: one try
    assert a.calls == 4
    a.script = [UpstreamConnectError("refused")]
    with pytest.raises(UpstreamConnectError):
        await retrying(a).send(post)  # never reached the target: retried for any method
    assert a.calls == 7


async def test_a_listed_status_is_retried_on_another_target_and_its_body_closed() -> None:
    a = Scripted(503, url="http://a")
    b = Scripted(200, url="http://b")
    response = await retrying(a, b).send(get(RetryPolicy(NO_BACKOFF)))
    assert (response.status, response.sent_to, response.retries) == (200, "http://b", 1)
    assert a.closed == 1
    a.script = [500]  # not in retry_on: the upstream's answer is passed on
    c = Scripted(200, url="http://c")
    response = await retrying(a, c).send(get(RetryPolicy(NO_BACKOFF)))
    assert (response.status, response.retries) == (500, 0)


async def test_the_budget_stops_retries() -> None:
    a = Scripted(503, url="http://a")
    spec = replace(NO_BACKOFF, budget=0.5, min_retries_per_second=0.0)
    policy = RetryPolicy(spec)
    layer = retrying(a)
    statuses = [(await layer.send(get(policy))).status for _ in range(4)]
    assert statuses == [503] * 4
    assert a.calls == 6  # 4 requests, 2 retries: half of the requests


async def test_no_target_up_is_503_with_retry_after_and_counts_the_tries_sent() -> None:
    breaker = BreakerSpec(consecutive_failures=1, failure_rate=0, ejection_time=20)
    a = Scripted(UpstreamConnectError("refused"), url="http://a")
    upstream = Upstream(UpstreamSpec("u", (a.target,), breaker=breaker))
    target = upstream.targets[0]
    target.tries = over(Breaking(target.breaker), a)  # type: ignore[arg-type]
    policy = RetryPolicy(NO_BACKOFF)
    with pytest.raises(NoHealthyTarget) as info:
        await upstream.send(get(policy))  # the first try ejects a; the retry finds none
    assert info.value.retries == 0 and 19 <= info.value.retry_after <= 20
    with pytest.raises(NoHealthyTarget):
        await upstream.send(get())  # raised before any try
    assert a.calls == 1
    await upstream.aclose()


async def test_the_route_deadline_is_a_route_timeout_naming_the_try_in_flight() -> None:
    a = Scripted(UpstreamConnectError("refused"), url="http://a")
    b = Scripted(10.0, url="http://b")
    policy = RetryPolicy(NO_BACKOFF, timeout=0.05)
    with pytest.raises(RouteTimeout) as info:
        await retrying(a, b).send(get(policy))
    assert (info.value.retries, info.value.sent_to) == (1, "http://b")


# ---- HTTP/1.1 request framing --------------------------------------------------------------


def test_request_bytes_frame_the_body_the_gateway_chose() -> None:
    post = UpstreamRequest(b"POST", b"/p", [(b"x-a", b"1")], b"hello", 5)
    assert request_bytes(post, b"up:80") == (
        b"POST /p HTTP/1.1\r\nhost: up:80\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello"
    )
    streamed = UpstreamRequest(b"PUT", b"/", [], _empty(), None, host=b"client")
    assert request_bytes(streamed, b"up") == (
        b"PUT / HTTP/1.1\r\nhost: client\r\ntransfer-encoding: chunked\r\n\r\n"
    )


class Wire:
    writing_paused = False

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self, timeout: float) -> None:
        return None


async def test_a_streamed_body_is_chunked_or_checked_against_its_length() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cde"):
            yield part

    chunked = Wire()
    await write_streamed_body(chunked, parts(), None, 1.0)
    assert chunked.data == b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    sized = Wire()
    await write_streamed_body(sized, parts(), 5, 1.0)
    assert sized.data == b"abcde"
    with pytest.raises(UpstreamProtocolError, match="shorter"):
        await write_streamed_body(Wire(), parts(), 6, 1.0)
