"""Every reference in the repository resolves inside it: Markdown links point at files that
exist, and nothing cites notes kept outside the checkout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
SKIP_DIRS |= {".hypothesis", "build"}
TEXT_SUFFIXES = {".md", ".py", ".toml", ".sh", ".txt", ".cfg", ".ini", ".yml", ".yaml"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
OUTSIDE = re.compile(r"PITFALLS\.md|BASELINES\.md|\.\./shared")
#: Files whose owners are removing their references as this is written (issue 12, item 5).
#: Take an entry out when its file is fixed; a new file never belongs here.
NOT_YET_FIXED: set[str] = set()


def repo_files(suffixes: set[str]) -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and path.suffix in suffixes:
            yield path


def test_markdown_links_resolve() -> None:
    broken = []
    for doc in repo_files({".md"}):
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target) or target.startswith("#"):
                    continue  # a URL or an anchor in the same page
                if not (doc.parent / target.split("#")[0]).exists():
                    broken.append(f"{doc.relative_to(ROOT)}:{number}: {target}")
    assert broken == []


def test_nothing_cites_notes_outside_the_repository() -> None:
    found = []
    for path in repo_files(TEXT_SUFFIXES):
        name = path.relative_to(ROOT).as_posix()
        if name in NOT_YET_FIXED or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert found == []


def test_the_checker_sees_a_reference_outside() -> None:
    """The pattern above catches the forms the old references took."""
    for line in ("a cap (PITFALLS.md)", "91/s (BASELINES.md)", "see ../shared/notes.md"):
        assert OUTSIDE.search(line)
    assert not OUTSIDE.search("see docs/known-defects.md and docs/baselines.md")


#: A path of the repository's own, as prose and comments name one (``gateway/state.py``).
MODULE_PATH = re.compile(
    r"(?<![\w./-])((?:gateway|routes|upstreams|loadtests|tests|docs|scripts|examples)"
    r"/[A-Za-z0-9_./-]*[A-Za-z0-9_]\.(?:py|md|toml|sh))\b"
)


def test_every_path_named_in_docs_and_code_exists() -> None:
    """A module merged or renamed leaves no reference to its old name anywhere."""
    missing = []
    for path in repo_files({".md", ".py", ".toml", ".sh"}):
        name = path.relative_to(ROOT).as_posix()
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for target in MODULE_PATH.findall(line):
                if "*" not in target and not (ROOT / target).exists():
                    missing.append(f"{name}:{number}: {target}")
    assert missing == []


def test_the_path_checker_sees_a_stale_module_name() -> None:
    found = MODULE_PATH.findall("validated by (`upstreams/http1.py`), see docs/reload.md.")
    assert found == ["upstreams/http1.py", "docs/reload.md"]
    assert MODULE_PATH.findall("https://example.org/x/gateway/app.py") == []
