"""Active health checks: a background task per upstream probes each target on a timer.

A target turns unhealthy after ``unhealthy_threshold`` failed probes in a row and healthy
again after ``healthy_threshold`` passed ones (Envoy's and nginx's thresholds). Targets
start healthy, so a gateway serves at once after a start or a reload; the first round of
probes runs immediately. Probes go through the target's own pool, so they test the same
path real requests take. Each worker process runs its own checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Protocol

from annotated_types import Gt

from upstreams.errors import UpstreamError
from upstreams.messages import UpstreamRequest, UpstreamResponse

log = logging.getLogger("quartgate.upstreams")

USER_AGENT = b"quartgate-health-check"


class _Sends(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...


class Target(Protocol):
    """What the checker needs of a target (``upstreams.target.Target`` is one); a protocol,
    so that ``settings`` (which holds :class:`HealthSpec`) does not import the target."""

    name: str
    healthy: bool
    health_checks_passed: int
    health_checks_failed: int

    @property
    def sender(self) -> _Sends: ...

    def refresh(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """``[upstreams.NAME.health]``; the defaults are what an empty table gives."""

    #: Path (and query) requested with GET.
    path: str = "/"
    #: Seconds between two rounds of probes.
    interval: Annotated[float, Gt(0)] = 5.0
    #: Seconds a probe may take, body included.
    timeout: Annotated[float, Gt(0)] = 2.0
    #: Passed probes in a row that make an unhealthy target healthy.
    healthy_threshold: Annotated[int, Gt(0)] = 2
    #: Failed probes in a row that make a healthy target unhealthy.
    unhealthy_threshold: Annotated[int, Gt(0)] = 3
    #: Statuses that pass; empty means any 2xx or 3xx.
    expected_status: tuple[int, ...] = ()

    def passes(self, status: int) -> bool:
        return status in self.expected_status if self.expected_status else 200 <= status < 400


class HealthChecker:
    """Probes every target of one upstream each ``interval`` until closed."""

    def __init__(self, spec: HealthSpec, targets: Sequence[Target]) -> None:
        self.spec = spec
        self.targets = list(targets)
        self._streak = {id(t): 0 for t in self.targets}  # >0 passes in a row, <0 failures
        self._task: asyncio.Task[None] | None = None
        #: Set after each full round of probes (tests and reloads wait on it).
        self.rounds = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self._check(t) for t in self.targets))
            self.rounds += 1
            await asyncio.sleep(self.spec.interval)

    async def _check(self, target: Target) -> None:
        reason = await self.probe(target)
        spec = self.spec
        streak = self._streak[id(target)]
        if reason is None:
            target.health_checks_passed += 1
            streak = streak + 1 if streak > 0 else 1
            if not target.healthy and streak >= spec.healthy_threshold:
                target.healthy = True
                target.refresh()
                log.info("target %s is healthy again (%d checks passed)", target.name, streak)
        else:
            target.health_checks_failed += 1
            streak = streak - 1 if streak < 0 else -1
            if target.healthy and -streak >= spec.unhealthy_threshold:
                target.healthy = False
                target.refresh()
                log.warning(
                    "target %s is unhealthy (%d checks failed, last: %s)",
                    target.name,
                    -streak,
                    reason,
                )
        self._streak[id(target)] = streak

    async def probe(self, target: Target) -> str | None:
        """One probe; None when it passed, else why it failed."""
        spec = self.spec
        request = UpstreamRequest(
            b"GET", spec.path.encode("ascii"), [(b"user-agent", USER_AGENT)], b"", 0
        )
        try:
            async with asyncio.timeout(spec.timeout):
                response = await target.sender.send(request)
                try:
                    async for _ in response.body:
                        pass
                finally:
                    await response.aclose()
        except TimeoutError:
            return f"no answer within {spec.timeout:g}s"
        except UpstreamError as error:
            return str(error) or type(error).__name__
        if not spec.passes(response.status):
            return f"status {response.status}"
        return None
