"""The adaptive concurrency limit alone: its rules with the clock in the test's hand, and the
admission layer over a scripted inner sender (no sockets, no wall-clock bounds).

The limit through a real gateway against a backend of known capacity is in
tests/test_overload.py; its figures are in loadtests/ (python -m loadtests.overload).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from upstreams.concurrency import AdaptiveConcurrencySpec, Gradient, late_bound
from upstreams.errors import UpstreamConnectError, UpstreamOverloaded, UpstreamTimeout
from upstreams.layers.limiting import Limiting
from upstreams.messages import UpstreamRequest, UpstreamResponse

SPEC = AdaptiveConcurrencySpec()
BASE = 0.020  # the upstream's own time to a response head, with nothing queued


class Clock:
    def __init__(self) -> None:
        self.now = 0.0


def run_window(
    gradient: Gradient, clock: Clock, rtt: float, in_flight: int, late: float = 0.0
) -> None:
    """One window of samples, each ``rtt`` long, started with ``in_flight`` requests out
    (``in_flight`` is also the most the window saw), while the worker's loop ran ``late``."""
    gradient.started(in_flight)
    count = gradient.spec.min_samples
    start = clock.now
    for i in range(count):
        clock.now = start + gradient.spec.window * (i + 1) / count + 1e-9
        gradient.sample(rtt, in_flight, clock.now, late)


def used(gradient: Gradient) -> int:
    return max(1, math.floor(gradient.limit))


def settle(gradient: Gradient, clock: Clock, rtt: float, windows: int = 40) -> None:
    for _ in range(windows):
        run_window(gradient, clock, rtt, used(gradient))


def test_the_limit_grows_while_latency_is_good_and_falls_when_it_rises() -> None:
    clock = Clock()
    gradient = Gradient(SPEC, clock.now)
    run_window(gradient, clock, BASE, 1)  # learns min_rtt at a short queue
    start = gradient.limit
    settle(gradient, clock, BASE, 10)
    grown = gradient.limit
    assert grown > start
    # The upstream slows down (requests queue there): the limit comes down, window by window.
    limits = []
    for _ in range(6):
        run_window(gradient, clock, 4 * BASE, used(gradient))
        limits.append(gradient.limit)
    assert limits == sorted(limits, reverse=True) and limits[-1] < grown / 2
    # ... and recovers once latency is good again: nothing holds it down.
    low = gradient.limit
    settle(gradient, clock, BASE, 20)
    assert gradient.limit > 2 * low


def test_latency_within_tolerance_does_not_lower_the_limit() -> None:
    clock = Clock()
    gradient = Gradient(SPEC, clock.now)
    run_window(gradient, clock, BASE, 1)
    before = gradient.limit
    settle(gradient, clock, BASE * SPEC.tolerance * 0.99, 5)
    assert gradient.limit >= before


def test_windows_with_too_few_samples_change_nothing() -> None:
    """Low QPS: a window is extended until it has min_samples; no false shedding."""
    clock = Clock()
    gradient = Gradient(SPEC, clock.now)
    start = gradient.limit
    for _ in range(SPEC.min_samples - 1):
        clock.now += 10 * SPEC.window  # long past the window's end
        gradient.sample(40 * BASE, used(gradient), clock.now)
    assert gradient.limit == start


def test_a_limit_that_is_not_used_does_not_grow() -> None:
    """Unbounded growth (concurrency-limits#134): latency is perfect but only 2 are out."""
    clock = Clock()
    gradient = Gradient(SPEC, clock.now)
    run_window(gradient, clock, BASE, 1)
    start = gradient.limit
    for _ in range(50):
        run_window(gradient, clock, BASE, 2)
    assert gradient.limit == start


def test_the_limit_stays_within_its_bounds() -> None:
    spec = replace(SPEC, min_limit=6, max_limit=40, min_rtt_interval=1e6)
    clock = Clock()
    gradient = Gradient(spec, clock.now)
    run_window(gradient, clock, BASE, 1)
    settle(gradient, clock, BASE, 200)
    assert gradient.limit == 40 and gradient.admit_limit == 40
    settle(gradient, clock, 50 * BASE, 200)
    assert gradient.limit == 6


def test_a_timeout_in_a_window_lowers_the_limit() -> None:
    clock = Clock()
    gradient = Gradient(SPEC, clock.now)
    run_window(gradient, clock, BASE, 1)
    before = gradient.limit
    gradient.timed_out()
    run_window(gradient, clock, BASE, used(gradient))  # otherwise a window to grow in
    assert gradient.limit < before


def test_windows_in_which_the_worker_ran_late_do_not_lower_the_limit() -> None:
    """The worker is the bottleneck (its loop 60 ms late): samples four times min_rtt say
    nothing about the upstream, so the limit holds; a timeout still lowers it."""
    clock = Clock()
    gradient = Gradient(SPEC, clock.now)
    run_window(gradient, clock, BASE, 1)
    settle(gradient, clock, BASE, 10)
    before = gradient.limit
    for _ in range(6):
        run_window(gradient, clock, 4 * BASE, used(gradient), late=0.060)
    assert gradient.limit == before and gradient.min_rtt == BASE
    # Lateness within the bound (tolerance - 1 of min_rtt: 10 ms here) is the upstream's.
    assert late_bound(SPEC, BASE) == pytest.approx(0.010)
    run_window(gradient, clock, 4 * BASE, used(gradient), late=0.009)
    assert gradient.limit < before
    lowered = gradient.limit
    gradient.timed_out()
    run_window(gradient, clock, 4 * BASE, used(gradient), late=0.060)
    assert gradient.limit < lowered


def test_samples_taken_while_the_loop_ran_late_do_not_remeasure_min_rtt() -> None:
    spec = replace(SPEC, min_rtt_interval=5.0, jitter=0.0)
    clock = Clock()
    gradient = Gradient(spec, clock.now)
    run_window(gradient, clock, BASE, 1)
    while clock.now < 2.0:  # until the first re-measure (8 windows), from clean samples
        run_window(gradient, clock, BASE, 1)
    # Light load, but the loop is late: each sample is the loop's lateness on top. The
    # re-measure due meanwhile waits (no probe either: it would only hold requests back).
    while clock.now < 12.0:
        run_window(gradient, clock, 3 * BASE, 1, late=0.040)
    assert gradient.min_rtt == BASE and not gradient.probing
    # The upstream itself slowed meanwhile: min_rtt comes from the clean samples only.
    run_window(gradient, clock, 4 * BASE, 1)
    assert gradient.min_rtt == 4 * BASE and not gradient.probing


def test_min_rtt_is_remeasured_from_requests_that_met_a_short_queue() -> None:
    spec = replace(SPEC, min_rtt_interval=5.0, jitter=0.0)
    clock = Clock()
    gradient = Gradient(spec, clock.now)
    run_window(gradient, clock, BASE, 1)
    assert gradient.min_rtt == BASE
    # The upstream's own latency doubles (a deploy); light load: requests meet no queue.
    while clock.now < 12.0:
        run_window(gradient, clock, 2 * BASE, 1)
    assert gradient.min_rtt == 2 * BASE and not gradient.probing


def test_under_saturation_a_probe_holds_in_flight_to_a_quarter_then_ends() -> None:
    spec = replace(SPEC, min_rtt_interval=5.0, jitter=0.0)
    clock = Clock()
    gradient = Gradient(spec, clock.now)
    run_window(gradient, clock, BASE, 1)
    settle(gradient, clock, BASE, 10)
    # Saturated: every request starts with the limit out, none with a short queue.
    while not gradient.probing:
        run_window(gradient, clock, 1.4 * BASE, used(gradient))
        assert clock.now < 20.0, "never probed"
    limit = gradient.limit
    assert gradient.admit_limit == max(1, math.floor(limit) // 4)
    # Requests admitted at a quarter of the limit meet no queue: min_rtt is taken, the
    # probe ends, and the limit it held is unchanged by the probe.
    run_window(gradient, clock, BASE, gradient.admit_limit)
    assert not gradient.probing and gradient.min_rtt == BASE
    assert gradient.limit == pytest.approx(limit)


# ---- the admission layer ------------------------------------------------------------------


class Held:
    """An inner sender whose responses come when the test says, one future per request."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[UpstreamResponse | BaseException]] = []
        self.calls = 0

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.calls += 1
        future: asyncio.Future[UpstreamResponse | BaseException] = (
            asyncio.get_running_loop().create_future()
        )
        self.pending.append(future)
        outcome = await future
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def response(retries: int = 0) -> UpstreamResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b""

    async def aclose() -> None:
        return None

    return UpstreamResponse(200, [], body(), aclose, b"ok", True, "http://a", retries)


async def until(condition: object, what: str) -> None:
    async with asyncio.timeout(10):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)
    assert condition(), what  # type: ignore[operator]


class Late:
    """The worker's loop lateness as the limiter reads it (gateway/ops/loop_lag.py's)."""

    def __init__(self, lag: float = 0.0) -> None:
        self.lag = lag


def limiter(lateness: Late | None = None, **settings: float) -> tuple[Limiting, Held]:
    spec = replace(SPEC, initial_limit=2, min_limit=2, **settings)  # type: ignore[arg-type]
    layer = Limiting("u", spec, lateness)
    inner = Held()
    layer.inner = inner
    return layer, inner


REQUEST = UpstreamRequest(b"GET", b"/", [])


async def test_over_the_limit_requests_queue_in_order_up_to_max_queue_then_are_refused() -> None:
    layer, inner = limiter(max_queue=2, queue_timeout=60.0)
    sends = [asyncio.ensure_future(layer.send(REQUEST)) for _ in range(4)]
    await until(lambda: inner.calls == 2 and len(layer._waiters) == 2, "two out, two queued")
    with pytest.raises(UpstreamOverloaded, match="the queue is full"):
        await layer.send(REQUEST)  # refused at once: no wait at all
    assert layer.stats().refused == 1 and layer.in_flight == 2
    inner.pending[0].set_result(response())  # one ends: the oldest waiter goes
    await until(lambda: inner.calls == 3, "the first waiter sent")
    assert layer.in_flight == 2 and len(layer._waiters) == 1
    for future in inner.pending[1:3]:
        future.set_result(response())
    await until(lambda: inner.calls == 4, "the second waiter sent")
    inner.pending[3].set_result(response())
    assert [s.status for s in await asyncio.gather(*sends)] == [200] * 4
    assert layer.in_flight == 0


async def test_full_says_a_request_now_would_be_refused_at_once() -> None:
    layer, inner = limiter(max_queue=1, queue_timeout=60.0)
    assert not layer.full
    held = [asyncio.ensure_future(layer.send(REQUEST)) for _ in range(2)]
    await until(lambda: inner.calls == 2, "the limit reached")
    assert not layer.full  # one may still wait in the queue
    waiting = asyncio.ensure_future(layer.send(REQUEST))
    await until(lambda: len(layer._waiters) == 1, "queued")
    assert layer.full
    refusal = layer.refusal(None)
    assert isinstance(refusal, UpstreamOverloaded) and refusal.summarised
    assert "the queue is full" in str(refusal) and layer.stats().refused == 1
    for future in inner.pending:
        future.set_result(response())
    await until(lambda: inner.calls == 3, "the waiter sent")
    assert not layer.full
    inner.pending[2].set_result(response())
    await asyncio.gather(*held, waiting)


async def test_a_sample_carries_the_loops_lateness_when_it_was_taken() -> None:
    late = Late()
    layer, inner = limiter(late)
    first = asyncio.ensure_future(layer.send(REQUEST))
    await until(lambda: inner.calls == 1, "sent")
    late.lag = 0.5  # the worker fell behind while the request was out
    inner.pending[0].set_result(response())
    await first
    gradient = layer._gradient
    assert gradient is not None and gradient._late  # this window will be dropped


async def test_a_request_that_waits_past_queue_timeout_is_refused_and_not_sent() -> None:
    layer, inner = limiter(max_queue=8, queue_timeout=0.01)
    held = [asyncio.ensure_future(layer.send(REQUEST)) for _ in range(2)]
    await until(lambda: inner.calls == 2, "the limit reached")
    with pytest.raises(UpstreamOverloaded, match="queue_timeout"):
        await layer.send(REQUEST)
    assert inner.calls == 2 and not layer._waiters and layer.in_flight == 2
    for future in inner.pending:
        future.set_result(response())
    await asyncio.gather(*held)
    assert layer.in_flight == 0


async def test_a_waiter_cancelled_by_its_client_leaves_no_place_taken() -> None:
    layer, inner = limiter(max_queue=8, queue_timeout=60.0)
    held = [asyncio.ensure_future(layer.send(REQUEST)) for _ in range(2)]
    await until(lambda: inner.calls == 2, "the limit reached")
    gone = asyncio.ensure_future(layer.send(REQUEST))
    await until(lambda: len(layer._waiters) == 1, "queued")
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    for future in inner.pending:
        future.set_result(response())
    await asyncio.gather(*held)
    assert layer.in_flight == 0 and not layer._waiters and inner.calls == 2
    assert layer.stats().refused == 0  # a client that left is no refusal


async def test_only_first_tries_that_answered_are_samples() -> None:
    layer, inner = limiter()
    sends = [asyncio.ensure_future(layer.send(REQUEST)) for _ in range(2)]
    await until(lambda: inner.calls == 2, "both sent")
    inner.pending[0].set_result(response(retries=1))  # answered on a retry: no sample
    inner.pending[1].set_exception(UpstreamConnectError("refused"))  # no answer: no sample
    await asyncio.gather(*sends, return_exceptions=True)
    gradient = layer._gradient
    assert gradient is not None and gradient._samples == [] and gradient._timeouts == 0
    third = asyncio.ensure_future(layer.send(REQUEST))
    await until(lambda: inner.calls == 3, "sent")
    inner.pending[2].set_exception(UpstreamTimeout("read timed out", phase="read"))
    with pytest.raises(UpstreamTimeout):
        await third
    assert gradient._timeouts == 1 and gradient._samples == []  # a sign, not a sample
    fourth = asyncio.ensure_future(layer.send(REQUEST))
    await until(lambda: inner.calls == 4, "sent")
    inner.pending[3].set_result(response())
    await fourth
    assert len(gradient._samples) == 1 and layer.in_flight == 0


async def test_a_response_holds_its_place_until_its_body_ends() -> None:
    layer, inner = limiter()
    streaming = response()
    streaming.complete = False
    first = asyncio.ensure_future(layer.send(REQUEST))
    await until(lambda: inner.calls == 1, "sent")
    inner.pending[0].set_result(streaming)
    got = await first
    assert layer.in_flight == 1  # the head is back, the body still streams
    await got.aclose()
    assert layer.in_flight == 0
