"""A config table validated straight into the dataclass that owns its settings.

Each setting is declared once, on its dataclass beside the code that uses it (name, type,
default, bound as ``Annotated[float, Gt(0)]``, unit in a comment). :func:`table` derives
from that declaration the pydantic model that checks a TOML table: strict (``"1"`` is no
integer, ``true`` is no number; an integer is accepted where a number is expected, as TOML
writes ``5`` for ``5.0``), unknown keys refused. The model is an intermediate: what
validation returns is the dataclass (or what ``build`` makes of the values).

Why a generated model and not ``TypeAdapter(TheDataclass)``: in strict mode pydantic
accepts only an *instance* for a dataclass field, never a table, and strictness cannot
be switched on per field without pydantic's own markers on the dataclass (``upstreams/``
and ``routes/`` do not import pydantic).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic import AfterValidator, BeforeValidator, ConfigDict, create_model

from gateway.config.checks import Bound, Check, bounded, required, required_default
from gateway.config.problems import suggest

#: Every table: strict types, unknown keys are errors. Arrays arrive as tuples
#: (gateway.config.loader freezes the document), so tuple fields need no lax mode.
STRICT = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)

_EMPTY: Mapping[str, Any] = {}


def fields_of(
    cls: type[Any],
    *,
    exclude: tuple[str, ...] = (),
    fields: Mapping[str, Any] = _EMPTY,
    checks: Mapping[str, Check] = _EMPTY,
    missing: Mapping[str, str] = _EMPTY,
) -> dict[str, tuple[Any, Any]]:
    """The keys of ``cls``'s table, ``name -> (annotation, default)``, from its fields.

    ``exclude``: fields that are no key of the table. ``fields``: the annotation (or
    ``(annotation, default)``) of a field whose TOML form differs from its Python one.
    ``checks``: a validator added to a field's type. ``missing``: the reason a required
    key's absence is reported with, instead of "is required".
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    definitions: dict[str, tuple[Any, Any]] = {}
    for item in dataclasses.fields(cls):
        if not item.init or item.name in exclude:
            continue
        default: Any = ...
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        annotation = fields.get(item.name)
        if isinstance(annotation, tuple):
            annotation, default = annotation
        elif annotation is None:
            annotation = declared(hints[item.name])
        if item.name in checks:
            annotation = Annotated[annotation, AfterValidator(checks[item.name])]
        if item.name in missing:
            annotation = Annotated[annotation, required(missing[item.name])]
            default = required_default()
        definitions[item.name] = (annotation, default)
    return definitions


def table(
    cls: type[Any],
    *,
    exclude: tuple[str, ...] = (),
    fields: Mapping[str, Any] = _EMPTY,
    checks: Mapping[str, Check] = _EMPTY,
    missing: Mapping[str, str] = _EMPTY,
    extra: Mapping[str, tuple[Any, Any]] = _EMPTY,
    build: Callable[..., Any] | None = None,
) -> Any:
    """The annotation that validates a TOML table into ``cls`` (see :func:`fields_of`).

    ``extra``: keys the table has beyond the dataclass's fields, ``(annotation, default)``.
    ``build``: makes the result from the dict of validated values, instead of ``cls(**)``;
    cross-field checks raise ``Invalid`` from it.
    """
    definitions = fields_of(cls, exclude=exclude, fields=fields, checks=checks, missing=missing)
    definitions.update(extra)
    return keys_table(f"{cls.__name__}Table", definitions, build or _construct(cls))


def keys_table(
    name: str, definitions: Mapping[str, tuple[Any, Any]], build: Callable[..., Any] = dict
) -> Any:
    """A strict table of the given keys, ``name -> (annotation, default)``; validates to
    ``build(values)``, by default the dict of values."""
    fields: dict[str, Any] = dict(definitions)
    model: Any = create_model(name, __config__=STRICT, **fields)
    known = tuple(fields)

    def note_typos(value: Any) -> Any:
        suggest(value, known)  # "did you mean" for an unknown key (problems.py)
        return value

    def finish(validated: Any) -> Any:
        return build(dict(validated.__dict__))  # not dict(validated): a key may be "keys"

    return Annotated[model, BeforeValidator(note_typos), AfterValidator(finish)]


def annotated(base: Any, *metadata: Any) -> Any:
    """``Annotated[base, *metadata]`` for a ``base`` made at run time (a table)."""
    return Annotated[(base, *metadata)]


def array_of(item: Any) -> Any:
    """``tuple[item, ...]`` for an ``item`` made at run time (a table)."""
    return tuple[item, ...]


def named(cls: type[Any]) -> Callable[[dict[str, Any]], Any]:
    """``build`` for a table whose ``name`` is its key: validates to ``name -> cls``."""

    def partial(values: dict[str, Any]) -> Callable[[str], Any]:
        def make(name: str) -> Any:
            return cls(name=name, **values)

        return make

    return partial


def _construct(cls: type[Any]) -> Callable[[dict[str, Any]], Any]:
    def construct(values: dict[str, Any]) -> Any:
        return cls(**values)

    return construct


def declared(annotation: Any) -> Any:
    """A dataclass field's annotation as pydantic validates it: ``annotated_types`` bounds
    become one worded check (see gateway.config.checks), a nested dataclass its table."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        bounds: list[Bound] = []
        unit = ""
        rest: list[Any] = []
        for meta in metadata:
            parts = list(meta) if isinstance(meta, annotated_types.GroupedMetadata) else [meta]
            for part in parts:
                if isinstance(part, Bound):
                    bounds.append(part)
                elif isinstance(part, str):
                    unit = part  # the bound's unit, e.g. "seconds"
                else:
                    rest.append(part)
        if bounds:
            rest.append(AfterValidator(bounded(bounds, unit)))
        return Annotated[(declared(base), *rest)] if rest else declared(base)
    if origin in (Union, types.UnionType):
        return Union[tuple(declared(a) for a in get_args(annotation))]  # noqa: UP007
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return table(annotation)
    return annotation
