"""What is wrong with a config file, as ``file: key: reason`` lines.

pydantic reports every problem of a document in one pass, each at a location such as
``("upstreams", "api", "max_connections")``; this module turns each into the line an
operator reads (``upstreams.api.max_connections: must be an integer, not a string``), in
the words quartgate has always used rather than pydantic's own. A check pydantic cannot
declare raises :class:`Invalid`, which may name several reasons at keys below its value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

#: Where a value is in the document: table keys and array indexes.
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        if not self.key:  # the file as a whole (it cannot be read)
            return f"{self.file}: {self.reason}"
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """The config file is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class Invalid(ValueError):
    """Raised by a validator: one or more reasons, each at a key below the value checked
    (``()`` is the value itself). pydantic keeps the exception in the error's context."""

    def __init__(self, *found: tuple[Loc, str]) -> None:
        super().__init__("; ".join(reason for _, reason in found))
        self.found = found

    @classmethod
    def at(cls, reason: str, *loc: str | int) -> Invalid:
        return cls((loc, reason))


def key_of(loc: Loc, document: Any = None) -> str:
    """``("routes", 0, "path")`` -> ``routes[0].path``; with the ``document`` the location
    is in, an array entry that has a name says it: ``routes[0] "orders".path``."""
    out = ""
    value = document
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            value = value[part] if isinstance(value, list | tuple) and part < len(value) else None
            name = value.get("name") if isinstance(value, dict) else None
            if isinstance(name, str) and name:
                out += f' "{name}"'
        else:
            out += f".{part}" if out else part
            value = value.get(part) if isinstance(value, dict) else None
    return out


#: Unknown key -> the known key of its table it most resembles, as the tables being
#: validated saw them (gateway.config.tables); empty outside a validation.
_NONE: dict[str, str] = {}
SUGGESTIONS: ContextVar[dict[str, str]] = ContextVar("quartgate_config_suggestions", default=_NONE)


def suggest(keys: dict[str, Any] | Any, known: Iterable[str]) -> None:
    """Note, for each key of ``keys`` no table field has, the field it most resembles."""
    suggestions = SUGGESTIONS.get()
    if not isinstance(keys, dict) or suggestions is _NONE:
        return
    names = list(known)
    for key in keys:
        if isinstance(key, str) and key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.75)
            if close:
                suggestions[key] = close[0]


def reasons(error: ValidationError, prefix: Loc = ()) -> list[tuple[Loc, str]]:
    """Every problem pydantic found, in order, as (location, reason)."""
    return [found for item in error.errors(include_url=False) for found in _reasons(item, prefix)]


def _reasons(item: Any, prefix: Loc) -> Iterator[tuple[Loc, str]]:
    loc: Loc = prefix + tuple(item["loc"])
    kind = item["type"]
    error = (item.get("ctx") or {}).get("error")
    if isinstance(error, Invalid):
        for below, reason in error.found:
            yield loc + below, reason
    elif kind in _EXPECTED:
        yield loc, f"must be {_EXPECTED[kind]}, not {kind_of(item['input'])}"
    elif kind == "extra_forbidden":
        known = SUGGESTIONS.get().get(str(loc[-1])) if loc else None
        yield loc, f"unknown key (did you mean {known!r}?)" if known else "unknown key"
    elif kind in _REASONS:
        yield loc, _REASONS[kind]
    else:  # not expected: pydantic's own words are better than none
        yield loc, str(item["msg"])


#: pydantic's type errors -> what the value must be.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "a boolean",
    "tuple_type": "an array",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}
_REASONS = {"missing": "is required", "extra_forbidden": "unknown key"}


def kind_of(value: Any) -> str:
    """A TOML value's kind, in the words of the TOML spec."""
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        tuple: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# ---- TOML syntax errors ------------------------------------------------------------------

_AT = re.compile(
    r"^(?P<what>.*?) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$"
)
_NEW_ENTRY = re.compile(r"""^\s*(\[\[?\s*[\w."' -]+\]\]?\s*(#.*)?$|[\w."'-]+\s*=)""")


def toml_problem(file: str, text: str, error: Exception) -> Problem:
    """A TOML syntax error as ``file: line L, column C: invalid TOML: reason``.

    tomllib says where it stopped, which for an array left open is where the next table or
    key begins, lines below the mistake: then the line that opened the array is named.
    """
    match = _AT.match(str(error))
    if match is None:
        return Problem(file, "", f"invalid TOML: {error}")
    what = match["what"][:1].lower() + match["what"][1:]
    if match["line"] is None:
        line = len(text.splitlines()) + 1  # past the last line: every array open is unclosed
        where = "end of file"
    else:
        line = int(match["line"])
        where = f"line {line}, column {match['column']}"
    opened = _open_array(text, line)
    if opened is not None:
        stopped = f"the parser stopped at {where}: {what}"
        reason = f"invalid TOML: the array begun here is not closed ({stopped})"
        return Problem(file, f"line {opened}", reason)
    return Problem(file, where, f"invalid TOML: {what}")


def _open_array(text: str, line: int) -> int | None:
    """The line of the innermost array still open where the parser stopped, when what it
    stopped at is the start of a new table or key, or the end of the file (what an array
    cannot hold); None otherwise (a wrong value inside an array is the value's fault)."""
    lines = text.splitlines()
    if line <= len(lines) and not _NEW_ENTRY.match(lines[line - 1]):
        return None
    opened: list[int] = []
    quote = ""
    for number, content in enumerate(lines[: line - 1], start=1):
        index = 0
        if not quote and not opened and content.lstrip().startswith("["):
            continue  # a table header
        while index < len(content):
            char = content[index]
            if quote:
                if content.startswith(quote, index):
                    quote, index = "", index + len(quote)
                    continue
                index += 2 if char == "\\" and quote[0] == '"' else 1
                continue
            if char == "#":
                break
            for delimiter in ('"""', "'''", '"', "'"):
                if content.startswith(delimiter, index):
                    quote = delimiter
                    index += len(delimiter)
                    break
            else:
                if char == "[":
                    opened.append(number)
                elif char == "]" and opened:
                    opened.pop()
                index += 1
        if quote in ('"', "'"):
            quote = ""  # a one-line string ends with its line
    return opened[-1] if opened else None
