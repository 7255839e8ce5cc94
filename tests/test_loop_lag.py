"""The worker's own overload signal: a blocked event loop turns shedding on, once per
episode, and a loop that caught up turns it off (gateway/ops/loop_lag.py). The request
path's refusal while shedding is in tests/test_overload.py."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.ops import loop_lag
from gateway.ops.loop_lag import LoopLag


async def until(condition: object, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_late_loop_sheds_once_per_episode_and_recovers(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_lag, "CALM", 0.2)
    watch = LoopLag(bound=0.05)
    watch.start()
    try:
        await asyncio.sleep(3 * loop_lag.TICK)
        assert not watch.shedding  # an idle loop is on time
        with caplog.at_level(logging.WARNING, logger="quartgate"):
            for _ in range(3):  # one episode of several late ticks
                time.sleep(0.15)  # the loop is blocked: what a saturated worker looks like
                await until(lambda: watch.shedding)
            assert watch.max_seen > 0.05
            await until(lambda: not watch.shedding)
        lines = [r.getMessage() for r in caplog.records]
        assert len([m for m in lines if m.startswith("worker overloaded")]) == 1
        assert len([m for m in lines if m.startswith("worker caught up")]) == 1
    finally:
        watch.stop()


async def test_a_bound_of_zero_never_sheds_and_stops_an_episode() -> None:
    watch = LoopLag(bound=0.05)
    watch.start()
    try:
        time.sleep(0.15)
        await until(lambda: watch.shedding)
        watch.bound = 0.0  # a reload turned it off
        assert not watch.shedding
        time.sleep(0.15)
        await asyncio.sleep(2 * loop_lag.TICK)
        assert not watch.shedding
    finally:
        watch.stop()
