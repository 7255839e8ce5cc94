"""A config that needs the otel extra says how to install it from the checkout: quartgate is
not on a package index, so ``pip install 'quartgate[otel]'`` would find nothing."""

from __future__ import annotations

import sys
import tomllib

import pytest

from gateway.config import ConfigError, parse_config

CONFIG = """
[tracing]
exporter = "none"
[upstreams.main]
targets = ["http://127.0.0.1:9"]
[[routes]]
path = "/"
upstream = "main"
"""


def test_tracing_without_the_extra_names_the_checkout_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)  # import fails as if absent
    with pytest.raises(ConfigError) as raised:
        parse_config(tomllib.loads(CONFIG), "t.toml")
    (problem,) = raised.value.problems
    assert problem.key == "tracing"
    assert "pip install -e '.[otel]'" in problem.reason
    assert "quartgate[otel]" not in problem.reason


def test_tracing_with_the_extra_is_accepted() -> None:
    config = parse_config(tomllib.loads(CONFIG), "t.toml")
    assert config.observability.tracing is not None
