"""The route's retry policy: the tries of one request, bounded by the route's deadline.

Each try goes to a target the balancer picks, another one than those already tried when
one is up, through that target's own stack (``Target.tries``: breaker, count, per-try
timeout), so every layer below sees each try. A failure or a listed status is tried again
as :class:`~upstreams.retry.RetryPolicy` allows (the budget, the deadline, a replayable
body, an idempotent method unless the connection was never made), all before a response
head is returned, so nothing of a failed try reaches the client.

Without a route policy the implicit one applies: a failed connect is tried once on
another target. With one target and no route policy there is nothing to retry: the one
try is handed down without a frame of this layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from time import perf_counter

from upstreams.errors import NoHealthyTarget, RouteTimeout, UpstreamError
from upstreams.layers.picking import Picker
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.retry import CONNECT_ONLY, RetryPolicy, backoff, condition
from upstreams.sender import Sending
from upstreams.target import Target

log = logging.getLogger("quartgate.upstreams")


class _Progress:
    """Where the tries of a request with a deadline are, for the RouteTimeout it may end in."""

    __slots__ = ("retries", "sent_to")

    def __init__(self) -> None:
        self.retries = 0
        self.sent_to = ""


class Retrying:
    __slots__ = ("_implicit", "_name", "_once", "_picker")

    def __init__(self, name: str, picker: Picker) -> None:
        self._name = name
        self._picker = picker
        several = len(picker.targets) > 1
        #: Without a route retry policy: a failed connect is tried once on another target.
        self._implicit = RetryPolicy(CONNECT_ONLY if several else replace(CONNECT_ONLY, attempts=1))
        self._once = not several

    def send(self, request: UpstreamRequest) -> Sending:
        policy = request.policy
        if policy is None:
            if self._once:
                picker = self._picker
                return picker.pick(picker.key(request), ()).tries.send(request)
            return self._tries(request, self._implicit, 0.0, None)
        retry = policy if policy.spec is not None else self._implicit
        if policy.timeout:
            return self._within(request, retry, policy.timeout)
        return self._tries(request, retry, 0.0, None)

    async def _within(
        self, request: UpstreamRequest, retry: RetryPolicy, timeout: float
    ) -> UpstreamResponse:
        """The tries within the route's deadline (``timeout``): 504 once it has passed."""
        deadline = asyncio.get_running_loop().time() + timeout
        progress = _Progress()
        try:
            async with asyncio.timeout_at(deadline):
                return await self._tries(request, retry, deadline, progress)
        except TimeoutError:
            error = RouteTimeout(
                f"upstream {self._name!r}: no response within the route timeout of {timeout:g}s"
            )
            error.retries = progress.retries
            error.sent_to = progress.sent_to
            raise error from None

    async def _tries(
        self,
        request: UpstreamRequest,
        retry: RetryPolicy,
        deadline: float,
        progress: _Progress | None,
    ) -> UpstreamResponse:
        spec = retry.spec
        assert spec is not None
        budget = retry.budget
        if budget is not None:
            budget.request(asyncio.get_running_loop().time())
        picker = self._picker
        key = picker.key(request)
        replayable = isinstance(request.body, bytes)
        tried: Sequence[Target] = ()  # a new list only when a retry happens
        attempt = 1
        while True:
            try:
                target = picker.pick(key, tried)
            except NoHealthyTarget as error:
                error.retries = attempt - 2 if attempt > 1 else 0  # the tries that were sent
                raise
            if progress is not None:
                progress.retries = attempt - 1
                progress.sent_to = target.url
            began = perf_counter() if attempt > 1 else 0.0  # a retry: Server-Timing parts it
            try:
                response = await target.tries.send(request)
            except UpstreamError as error:
                why = condition(error)
                if not (
                    attempt < spec.attempts
                    and replayable
                    and why in retry.conditions
                    and (why == "connect_error" or request.method in retry.methods)
                ) or not await self._before_retry(request, retry, attempt, deadline, why, target):
                    error.retries = attempt - 1
                    raise
                tried = [*tried, target]
                attempt += 1
                continue
            status = response.status
            if (
                status in retry.statuses
                and attempt < spec.attempts
                and replayable
                and request.method in retry.methods
                and await self._before_retry(
                    request, retry, attempt, deadline, f"status {status}", target, response
                )
            ):
                tried = [*tried, target]
                attempt += 1
                continue
            response.retries = attempt - 1
            if began:
                response.answered_try_at = began
            return response

    async def _before_retry(
        self,
        request: UpstreamRequest,
        retry: RetryPolicy,
        attempt: int,
        deadline: float,
        why: str,
        target: Target,
        response: UpstreamResponse | None = None,
    ) -> bool:
        """Whether to retry now (budget and deadline allow); sleeps the back-off if so."""
        spec = retry.spec
        assert spec is not None
        now = asyncio.get_running_loop().time()
        delay = backoff(spec, attempt)
        if deadline and now + delay >= deadline:
            return False
        if retry.budget is not None and not retry.budget.try_retry(now):
            log.info(
                "upstream %r: retry budget spent; not retrying after %s",
                self._name,
                why,
                extra={"request_id": request.request_id or "-"},
            )
            return False
        if response is not None:
            await response.aclose()  # an unread body: the connection is not reused
        log.info(
            "upstream %r: %s from %s; retry %d of %d",
            self._name,
            why,
            target.url,
            attempt,
            spec.attempts - 1,
            extra={"request_id": request.request_id or "-"},
        )
        if delay:
            await asyncio.sleep(delay)
        return True
