"""Pydantic's validation report, turned into the project's one-line `ConfigError`.

Every door validates through `validate`: it names each problem's location the door's way (an
option like `--width` on the command line, a key path like `sampling.steps` in a job spec)
and words it the project's way (`must be an integer, got str 'ten'`), so an operator never
sees a pydantic traceback or its multi-line report.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pipeline.config.values import PathBase
from pipeline.errors import ConfigError

Loc = tuple[str | int, ...]
Namer = Callable[[Loc], str]
ErrorType = Callable[[str | None, str, str | None], ConfigError]  # (where, what, origin)
M = TypeVar("M", bound=BaseModel)

TYPE_WORDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true/false",
    "bool_parsing": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
}


class ConfigProblem(ValueError):
    """Raised by a validator for a problem at `field` below the value it validates (a model
    validator names the field it blames). The message may name other fields of that model as
    "{key}" (listed in `refs`); each door spells them its own way ("--caption" on the command
    line, "outputs.caption" in a spec)."""

    def __init__(self, field: str | Loc, message: str, refs: tuple[str, ...] = ()):
        super().__init__(message)
        self.field: Loc = (field,) if isinstance(field, str) else tuple(field)
        self.message = message
        self.refs = refs


@dataclass(frozen=True)
class Problem:
    loc: Loc
    message: str
    refs: tuple[tuple[str, Loc], ...] = ()  # "{key}" in the message -> the location it names

    def describe(self, name: Namer) -> tuple[str, str]:
        """(where, what) with the door's names for the location and the fields it refers to."""
        message = self.message
        for key, loc in self.refs:
            message = message.replace("{" + key + "}", name(loc))
        return name(self.loc), message


def key_path(loc: Loc) -> str:
    """A location as a job spec key path: `sampling.steps`, `models[1]`, `pairing.pairs[0]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def validate(
    model: type[M],
    data: Mapping[str, Any],
    *,
    paths: PathBase,
    name: Namer = key_path,
    origin: str | None = None,
    error: ErrorType = ConfigError,
) -> M:
    """`data` validated as `model`, relative paths resolved against `paths`; any problem is
    raised as one `error` line (the first problem, and where the others are)."""
    try:
        return model.model_validate(data, context={"paths": paths})
    except ValidationError as report:
        raise one_line(problems(report, model), name, origin, error) from None


def one_line(
    found: list[Problem], name: Namer, origin: str | None = None, error: ErrorType = ConfigError
) -> ConfigError:
    where, what = found[0].describe(name)
    others = [name(p.loc) or "the whole input" for p in found[1:]]
    if others:
        what += f" (and {len(others)} more: {', '.join(dict.fromkeys(others))})"
    return error(where or None, what, origin)


def problems(report: ValidationError, model: type[BaseModel]) -> list[Problem]:
    """Each line of pydantic's report as a `Problem`; the unknown keys of one mapping are one."""
    details = report.errors()
    unknown: dict[Loc, list[str]] = {}
    for detail in details:
        if detail["type"] == "extra_forbidden":
            unknown.setdefault(tuple(detail["loc"][:-1]), []).append(str(detail["loc"][-1]))
    found: list[Problem] = []
    for detail in details:
        loc = tuple(detail["loc"])
        if detail["type"] != "extra_forbidden":
            found.append(_problem(detail, loc))
        elif loc[:-1] in unknown:
            found.append(
                Problem(loc[:-1], _unknown_keys(unknown.pop(loc[:-1]), _model_at(model, loc[:-1])))
            )
    return found


def _problem(detail: ErrorDetails, loc: Loc) -> Problem:
    kind, value, context = detail["type"], detail["input"], detail.get("ctx") or {}
    if kind == "missing":
        return Problem(loc, "is required")
    if kind in TYPE_WORDS:
        return Problem(loc, f"must be {TYPE_WORDS[kind]}, got {shown(value)}")
    if kind == "literal_error":  # a spec's `kind` read by another kind's model
        return Problem(loc, f"must be {context.get('expected')}, got {value!r}")
    cause = context.get("error")
    if isinstance(cause, ConfigProblem):
        return Problem(
            loc + cause.field, cause.message, tuple((key, (*loc, key)) for key in cause.refs)
        )
    if cause is not None:
        return Problem(loc, str(cause))
    message = detail["msg"]
    return Problem(loc, message[:1].lower() + message[1:])


def shown(value: Any) -> str:
    """A value for a message: its type and (shortened) repr; a bare repr for true/false/None."""
    text = repr(value)
    text = text[:60] + "..." if len(text) > 60 else text
    return text if value is None or isinstance(value, bool) else f"{type(value).__name__} {text}"


def _unknown_keys(keys: list[str], model: type[BaseModel] | None) -> str:
    known = f"; known: {', '.join(model.model_fields)}" if model is not None else ""
    return f"unknown key(s) {sorted(keys)}{known}"


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class whose mapping sits at `loc` (for listing its known keys)."""
    current: Any = model
    for part in loc:
        if not (_is_model(current) and part in current.model_fields):
            return None
        current = _unwrapped(current.model_fields[part].annotation)
    return current if _is_model(current) else None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _unwrapped(annotation: Any) -> Any:
    """`X` from `X | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner[0] if len(inner) == 1 else annotation
    return annotation
