"""``[admin]``, ``[metrics]``, ``[access_log]``, ``[tracing]``, declared in
gateway/observability/sections.py; here the checks a type cannot say. The admin token may
come from the environment (``token_env``): the caller hands the environment in (the
``environ`` of the validation context), config never reads ``os.environ`` itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo

from gateway.config.checks import host_port, not_empty, one_of
from gateway.config.problems import Invalid
from gateway.config.tables import annotated, table
from gateway.observability.sections import (
    ACCESS_LOG_FORMATS,
    LOG_FORMATS,
    LOG_LEVELS,
    OTEL_MISSING,
    READINESS,
    TRACING_EXPORTERS,
    AccessLogSettings,
    AdminSettings,
    LoggingSettings,
    MetricsSettings,
    TracingSettings,
)


def _long_enough(token: str) -> str:
    if token and len(token) < 16:
        raise Invalid.at("must be at least 16 characters")
    return token


def _token(
    values: dict[str, Any], environ: Mapping[str, str], deferred: list[str] | None = None
) -> AdminSettings:
    token: str = values["token"]
    token_env: str = values["token_env"]
    if token and token_env:
        raise Invalid.at("give either token or token_env, not both", "token_env")
    if token_env:
        # Read once, at load, like every other setting: the config object is the truth after.
        token = environ.get(token_env, "")
        if not token:
            reason = f"environment variable {token_env} is empty"
            if deferred is None:
                raise Invalid.at(reason, "token_env")
            # ``quartgate check`` in CI, without the secret: the shape is what is checked.
            deferred.append(reason + ": quartgate serve refuses to start without it")
            return AdminSettings(values["bind"], "", values["readiness"])
        try:
            _long_enough(token)
        except Invalid as error:
            raise Invalid(*((("token", *loc), why) for loc, why in error.found)) from None
    return AdminSettings(values["bind"], token, values["readiness"])


def _admin(values: dict[str, Any], info: ValidationInfo) -> AdminSettings:
    context = info.context or {}
    return _token(values, context.get("environ", {}), context.get("deferred"))


def _buckets(value: tuple[Any, ...]) -> tuple[float, ...]:
    numbers = all(isinstance(b, int | float) and not isinstance(b, bool) for b in value)
    if (
        not value
        or not numbers
        or any(b <= 0 for b in value)
        or sorted(value) != list(value)
        or len(set(value)) < len(value)
    ):
        raise Invalid.at("must be a non-empty, strictly increasing list of positive numbers")
    return tuple(float(b) for b in value)


def _tracing(values: dict[str, Any]) -> TracingSettings:
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        raise Invalid.at(OTEL_MISSING) from None
    return TracingSettings(**values)


ADMIN = annotated(
    table(
        AdminSettings,
        checks={"bind": host_port, "token": _long_enough, "readiness": one_of(READINESS)},
        extra={"token_env": (str, "")},
        build=dict,
    ),
    AfterValidator(_admin),
)
LOGGING = table(
    LoggingSettings, checks={"level": one_of(LOG_LEVELS), "format": one_of(LOG_FORMATS)}
)
METRICS = table(
    MetricsSettings, fields={"buckets": Annotated[tuple[Any, ...], AfterValidator(_buckets)]}
)
ACCESS_LOG = table(
    AccessLogSettings, checks={"path": not_empty, "format": one_of(ACCESS_LOG_FORMATS)}
)
TRACING = table(
    TracingSettings,
    checks={"service_name": not_empty, "exporter": one_of(TRACING_EXPORTERS)},
    build=_tracing,
)
