"""The checks several tables share, written once: bounds, choices, names, paths.

Each is a pydantic after-validator (value in, value out, :class:`Invalid` raised with
today's reason). Numeric bounds are declared on the dataclasses with ``annotated_types``
(``Annotated[float, Gt(0)]``) and worded here, from the whole declaration: pydantic would
report ``ge=0`` of ``Interval(ge=0, le=1)`` alone, the file says "between 0 and 1".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BeforeValidator, Field

from gateway.config.problems import Invalid

Check = Callable[[Any], Any]
Bound = Gt | Ge | Lt | Le
#: The default of a required field whose absence has its own reason (see :func:`required`).
MISSING: Final = object()


def bounded(bounds: Sequence[Bound], unit: str = "") -> Check:
    """A check of the declared ``bounds``; ``unit`` (seconds, ...) is named in "at least"."""
    low = next((b for b in bounds if isinstance(b, Gt | Ge)), None)
    high = next((b for b in bounds if isinstance(b, Lt | Le)), None)
    reason = _wording(low, high, unit)

    def check(value: Any) -> Any:
        ok = all(_within(value, b) for b in bounds)
        if not ok:
            raise Invalid.at(reason)
        return value

    return check


def _within(value: Any, bound: Bound) -> bool:
    if isinstance(bound, Gt):
        return bool(value > bound.gt)
    if isinstance(bound, Ge):
        return bool(value >= bound.ge)
    if isinstance(bound, Lt):
        return bool(value < bound.lt)
    return bool(value <= bound.le)


def _wording(low: Gt | Ge | None, high: Lt | Le | None, unit: str) -> str:
    if isinstance(low, Ge) and isinstance(high, Le):
        return f"must be between {low.ge:g} and {high.le:g}"
    if isinstance(low, Gt):
        return f"must be greater than {low.gt:g}"
    if isinstance(low, Ge):
        if low.ge == 0:
            return "must not be negative"
        return f"must be at least {low.ge:g}" + (f" ({unit})" if unit else "")
    if isinstance(high, Lt):
        return f"must be less than {high.lt:g}"
    if isinstance(high, Le):
        return f"must be at most {high.le:g}"
    return "is out of range"


def one_of(choices: Sequence[str]) -> Check:
    def check(value: str) -> str:
        if value not in choices:
            raise Invalid.at(f"must be one of {', '.join(choices)}")
        return value

    return check


def reason_of(test: Callable[[Any], str | None]) -> Check:
    """A check from a function that returns the reason a value is wrong, or None."""

    def check(value: Any) -> Any:
        reason = test(value)
        if reason:
            raise Invalid.at(reason)
        return value

    return check


def header_name(value: str) -> str:
    """A request header name, lower-cased (``[gateway] request_id_header``)."""
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise Invalid.at("must be a header name (letters, digits, '-')")
    return value.lower()


def lower(value: str) -> str:
    return value.lower()


def not_empty(value: str) -> str:
    if not value:
        raise Invalid.at("must not be empty")
    return value


def import_path(value: str) -> str:
    module, _, attribute = value.partition(":")
    if not module or not attribute:
        raise Invalid.at("must be 'module:attribute'")
    return value


def request_path(value: str) -> str:
    """A path the gateway itself requests (health checks)."""
    if not (value.startswith("/") and value.isascii() and " " not in value):
        raise Invalid.at("must be an ASCII path starting with '/'")
    return value


def host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid.at("must be HOST:PORT with a port from 1 to 65535")
    return value


def required(reason: str) -> Any:
    """A field that is required, with its own reason when absent::

    limit: Annotated[int, required("is required (requests per period)")] = MISSING
    """

    def check(value: Any) -> Any:
        if value is MISSING:
            raise Invalid.at(reason)
        return value

    return BeforeValidator(check)


def required_default() -> Any:
    """The default that goes with :func:`required`: validated, so its reason is raised."""
    return Field(default=MISSING, validate_default=True)
