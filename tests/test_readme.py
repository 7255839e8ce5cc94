"""The README's config example must be a config quartgate accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUARTGATE_ADMIN_TOKEN", "a-token-of-sixteen-plus")
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no toml example"
    config = parse_config(tomllib.loads(blocks[0]), "README.md")
    assert config.routes[0].name == "users"
    assert [t.weight for t in config.upstreams["users"].targets] == [1, 2]
