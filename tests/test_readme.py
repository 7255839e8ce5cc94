"""The README's config example must be a config quartgate accepts."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from gateway.config import parse_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUARTGATE_ADMIN_TOKEN", "a-token-of-sixteen-plus")
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no toml example"
    config = parse_config(tomllib.loads(blocks[0]), "README.md", environ=os.environ)
    assert config.routes[0].name == "users"
    assert [t.weight for t in config.upstreams["users"].targets] == [1, 2]


VENV_COMMANDS = {"quartgate", "python", "hypercorn", "locust", "pip"}
ROOT = README.parent


def _shell_lines(text: str) -> list[str]:
    """The command lines of the README's ```sh blocks, comments and env assignments stripped."""
    lines = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


def _first_word(command: str) -> str:
    words = [w for w in command.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    return words[0] if words else ""


def test_readme_commands_work_in_a_fresh_shell() -> None:
    """A bare venv command only after the README has said to activate the venv."""
    text = README.read_text()
    activated = False
    bare = []
    for command in _shell_lines(text):
        if command.startswith("source .venv/bin/activate"):
            activated = True
        elif _first_word(command) in VENV_COMMANDS and not activated:
            bare.append(command)
    assert bare == []
    assert activated


def test_readme_config_paths_exist() -> None:
    paths = []
    for command in _shell_lines(README.read_text()):
        paths += re.findall(r"(?:-c|--config|QUARTGATE_CONFIG=)\s*(\S+)", command)
    assert "examples/gateway.toml" in paths
    missing = [p for p in paths if not (ROOT / p).is_file()]
    assert missing == []


def test_readme_check_command_passes_on_the_example() -> None:
    command = next(c for c in _shell_lines(README.read_text()) if c.startswith("quartgate check"))
    args = command.split()
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / args[0]), *args[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "examples/gateway.toml: OK" in result.stdout


def test_example_config_names_a_script_that_exists() -> None:
    head = (ROOT / "examples" / "gateway.toml").read_text().split("\n\n", 1)[0]
    scripts = re.findall(r"scripts/[\w.-]+", head)
    assert scripts and all((ROOT / s).is_file() for s in scripts)
