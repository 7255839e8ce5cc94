"""Parsing the resilience keys: ``[upstreams.X]`` balancing and caps, ``[upstreams.X.health]``,
``[upstreams.X.breaker]``, and a route's ``timeout`` and ``[routes.retry]``.

``gateway.config`` calls these with its :class:`ConfigReader`, so problems are reported
like every other key (``file: key: reason``) and unknown keys stay errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from upstreams.balancer import BALANCERS
from upstreams.breaker import BreakerSpec
from upstreams.health import HealthSpec
from upstreams.retry import CONDITIONS, RetrySpec

if TYPE_CHECKING:
    from gateway.config import ConfigReader

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def parse_upstream_resilience(
    reader: ConfigReader, entry: dict[str, Any], prefix: str
) -> dict[str, Any]:
    """Pop an upstream's resilience keys; keyword arguments for ``UpstreamSpec``."""
    balancer = reader.take(entry, prefix, "balancer", str, "round_robin", _one_of(BALANCERS))
    hash_on = reader.take(entry, prefix, "hash_on", str, "client_ip", _hash_on)
    max_requests = reader.take(entry, prefix, "max_requests", int, 0, _non_negative)
    health = _health(reader, entry.pop("health"), f"{prefix}.health") if "health" in entry else None
    breaker = (
        _breaker(reader, entry.pop("breaker"), f"{prefix}.breaker") if "breaker" in entry else None
    )
    return {
        "balancer": balancer,
        "hash_on": hash_on,
        "max_requests": max_requests,
        "health": health,
        "breaker": breaker,
    }


def parse_route_resilience(
    reader: ConfigReader, entry: dict[str, Any], prefix: str
) -> dict[str, Any]:
    """Pop a route's ``timeout`` and ``[routes.retry]``; entries for ``RouteSpec.options``."""
    options: dict[str, Any] = {}
    timeout = reader.take(entry, prefix, "timeout", float, 0.0, _non_negative)
    if timeout:
        options["timeout"] = timeout
    if "retry" in entry:
        retry = _retry(reader, entry.pop("retry"), f"{prefix}.retry")
        if retry is not None:
            options["retry"] = retry
    return options


def _health(reader: ConfigReader, raw: Any, prefix: str) -> HealthSpec | None:
    table = reader.table(raw, prefix)
    if table is None:
        return None
    d = HealthSpec()
    path = reader.take(table, prefix, "path", str, d.path, _path)
    interval = reader.take(table, prefix, "interval", float, d.interval, _positive)
    timeout = reader.take(table, prefix, "timeout", float, d.timeout, _positive)
    healthy = reader.take(table, prefix, "healthy_threshold", int, d.healthy_threshold, _positive)
    unhealthy = reader.take(
        table, prefix, "unhealthy_threshold", int, d.unhealthy_threshold, _positive
    )
    expected = reader.take(table, prefix, "expected_status", list, [])
    statuses: list[int] = []
    for index, item in enumerate(expected):
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            statuses.append(item)
        else:
            reader.problem(f"{prefix}.expected_status[{index}]", "must be a status code 100-599")
    reader.leftovers(table, prefix)
    return HealthSpec(path, interval, timeout, healthy, unhealthy, tuple(statuses))


def _breaker(reader: ConfigReader, raw: Any, prefix: str) -> BreakerSpec | None:
    table = reader.table(raw, prefix)
    if table is None:
        return None
    d = BreakerSpec()
    spec = BreakerSpec(
        consecutive_failures=reader.take(
            table, prefix, "consecutive_failures", int, d.consecutive_failures, _non_negative
        ),
        failure_rate=reader.take(table, prefix, "failure_rate", float, d.failure_rate, _fraction),
        window=reader.take(table, prefix, "window", float, d.window, _at_least_one),
        min_requests=reader.take(table, prefix, "min_requests", int, d.min_requests, _positive),
        ejection_time=reader.take(
            table, prefix, "ejection_time", float, d.ejection_time, _positive
        ),
        max_ejection_time=reader.take(
            table, prefix, "max_ejection_time", float, d.max_ejection_time, _positive
        ),
        half_open_requests=reader.take(
            table, prefix, "half_open_requests", int, d.half_open_requests, _positive
        ),
    )
    reader.leftovers(table, prefix)
    if spec.max_ejection_time < spec.ejection_time:
        reader.problem(f"{prefix}.max_ejection_time", "must not be less than ejection_time")
    if not spec.consecutive_failures and not spec.failure_rate:
        reader.problem(prefix, "consecutive_failures and failure_rate are both 0: never ejects")
    return spec


def _retry(reader: ConfigReader, raw: Any, prefix: str) -> RetrySpec | None:
    table = reader.table(raw, prefix)
    if table is None:
        return None
    d = RetrySpec()
    attempts = reader.take(table, prefix, "attempts", int, d.attempts, _positive)
    retry_on_raw = reader.take(table, prefix, "retry_on", list, list(d.retry_on))
    retry_on: list[str] = []
    for index, item in enumerate(retry_on_raw):
        word = str(item)
        if word in CONDITIONS or (word.isdigit() and 500 <= int(word) <= 599):
            retry_on.append(word)
        else:
            reader.problem(
                f"{prefix}.retry_on[{index}]",
                f"{item!r} is not one of {', '.join(CONDITIONS)} or a 5xx status like \"503\"",
            )
    methods_raw = reader.take(table, prefix, "methods", list, list(d.methods))
    methods: list[str] = []
    for index, item in enumerate(methods_raw):
        method = str(item).upper()
        if method in _METHODS:
            methods.append(method)
        else:
            reader.problem(f"{prefix}.methods[{index}]", f"unknown method {item!r}")
    spec = RetrySpec(
        attempts=attempts,
        retry_on=tuple(retry_on),
        methods=tuple(methods),
        backoff_base=reader.take(
            table, prefix, "backoff_base", float, d.backoff_base, _non_negative
        ),
        backoff_max=reader.take(table, prefix, "backoff_max", float, d.backoff_max, _non_negative),
        per_try_timeout=reader.take(
            table, prefix, "per_try_timeout", float, d.per_try_timeout, _non_negative
        ),
        budget=reader.take(table, prefix, "budget", float, d.budget, _fraction),
        min_retries_per_second=reader.take(
            table, prefix, "min_retries_per_second", float, d.min_retries_per_second, _non_negative
        ),
    )
    reader.leftovers(table, prefix)
    return spec


# ---- small checks ------------------------------------------------------------------------


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _at_least_one(value: float) -> str | None:
    return None if value >= 1 else "must be at least 1 (seconds)"


def _fraction(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be between 0 and 1"


def _path(value: str) -> str | None:
    ok = value.startswith("/") and value.isascii() and " " not in value
    return None if ok else "must be an ASCII path starting with '/'"


def _hash_on(value: str) -> str | None:
    if value == "client_ip":
        return None
    kind, _, name = value.partition(":")
    if kind == "header" and name and all(c.isalnum() or c in "-_" for c in name):
        return None
    return "must be 'client_ip' or 'header:NAME'"


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check
