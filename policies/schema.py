"""Build frozen dataclasses from parsed YAML, collecting every problem with its YAML path.

Pure: values in, values out. Unknown keys are errors (with a close-match hint), wrong types and
out-of-range values are errors, and all of them are reported at once.

Three hooks for a dataclass, all optional:
- `field(metadata=check(fn))`: `fn(value)` returns why the field's value is wrong, or None.
- `field(metadata=check_each(fn))`: the same for every item of a list field, reported at `field[i]`.
- a static method `schema_rules(values)` for rules across fields: it gets the fields that converted
  cleanly (absent ones with their defaults; a field with a problem is left out, so each rule looks
  only at what it needs) and yields `(relative path, reason)` pairs, `""` for the object itself.
  It runs even when other fields have problems, so those are reported at once with the rest.
A `__post_init__` may raise `Invalid` (problems at relative paths) or `ValueError` (one reason
for the whole object) to refuse a direct construction too.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from policies.errors import Invalid

T = TypeVar("T")

Check = Callable[[Any], str | None]
"""A field's extra check: returns the reason the value is wrong, or None. Put in field metadata."""


Rules = Callable[[Mapping[str, Any]], Iterable[tuple[str, str]]]
"""A dataclass's `schema_rules`: cleanly converted field values in, `(relative path, reason)` out."""


def check(fn: Check) -> dict[str, Check]:
    """`field(default=..., metadata=check(in_range(0, 1)))`."""
    return {"check": fn}


def check_each(fn: Check) -> dict[str, Check]:
    """`field(default=(), metadata=check_each(non_blank))`: checks every item of a list field."""
    return {"check_each": fn}


def run_rules(instance: Any) -> None:
    """For `__post_init__`: raise `Invalid` when the instance breaks its class's `schema_rules`."""
    rules: Rules | None = getattr(type(instance), "schema_rules", None)
    if rules is None:
        return
    values = {field.name: getattr(instance, field.name) for field in dataclasses.fields(instance) if field.init}
    problems = list(rules(values))
    if problems:
        raise Invalid(problems)


def in_range(low: float, high: float, *, low_open: bool = False) -> Check:
    def verify(value: Any) -> str | None:
        above = value > low if low_open else value >= low
        if above and value <= high:
            return None
        bracket = "(" if low_open else "["
        return f"must be in {bracket}{low:g}, {high:g}], got {value!r}"

    return verify


def positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def build(cls: type[T], data: Any, *, path: str = "") -> tuple[T | None, list[str]]:
    """Return (instance, []) or (None, problems)."""
    problems: list[str] = []
    value = _convert(cls, data, path, problems)
    return (value if not problems else None), problems


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " or ".join(map(repr, get_args(tp)))
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}.get(
            tp.__name__, tp.__name__
        )
    return str(tp)


def _convert(tp: Any, data: Any, path: str, problems: list[str]) -> Any:
    where = path or "(top level)"
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(tp, data, path, problems)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if data is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], data, path, problems)
        return _convert_union(inner, data, path, problems)
    if origin is Literal:
        allowed = get_args(tp)
        if data not in allowed:
            problems.append(f"{where}: must be one of {', '.join(map(repr, allowed))}, got {data!r}")
        return data
    if origin in (tuple, list):
        if not isinstance(data, list):
            problems.append(f"{where}: must be a list, got {type(data).__name__}")
            return ()
        (item_type, *_) = get_args(tp)
        return tuple(_convert(item_type, item, _join(path, i), problems) for i, item in enumerate(data))
    if origin in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(data, dict):
            problems.append(f"{where}: must be a mapping, got {type(data).__name__}")
            return {}
        key_type, value_type = get_args(tp)
        return {
            _convert(key_type, key, path, problems): _convert(value_type, item, _join(path, str(key)), problems)
            for key, item in data.items()
        }
    return _convert_scalar(tp, data, where, problems)


def _convert_union(options: list[Any], data: Any, path: str, problems: list[str]) -> Any:
    """The first option the value converts to cleanly, in the order the annotation gives them; when
    none fits, the problems of the closest one (fewest problems), said once."""
    attempts: list[tuple[Any, list[str]]] = []
    for option in options:
        trial: list[str] = []
        value = _convert(option, data, path, trial)
        if not trial:
            return value
        attempts.append((value, trial))
    value, closest = min(attempts, key=lambda attempt: len(attempt[1]))
    where = path or "(top level)"
    if any(not problem.startswith(f"{where}: ") for problem in closest):
        problems.extend(closest)  # it had the right shape: what is wrong inside it says most
    else:
        names = " or ".join(_type_name(option) for option in options)
        problems.append(f"{where}: must be {names}, got {data!r}")
    return value


def _convert_scalar(tp: Any, data: Any, where: str, problems: list[str]) -> Any:
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            problems.append(f"{where}: must be a number, got {data!r}")
            return 0.0
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            problems.append(f"{where}: must be an integer, got {data!r}")
            return 0
        return data
    if tp in (str, bool):
        if not isinstance(data, tp):
            problems.append(f"{where}: must be {_type_name(tp)}, got {data!r}")
        return data
    raise TypeError(f"schema cannot convert to {tp!r}")  # a bug in our dataclasses, not in the file


def _convert_field(field: dataclasses.Field[Any], tp: Any, data: Any, path: str, problems: list[str]) -> Any:
    """Convert one field's value, then run its `check_each` and `check` if it converted cleanly."""
    before = len(problems)
    value = _convert(tp, data, path, problems)
    verify_each: Check | None = field.metadata.get("check_each")
    if verify_each is not None and len(problems) == before and isinstance(value, tuple):
        for i, item in enumerate(value):
            reason = verify_each(item)
            if reason is not None:
                problems.append(f"{_join(path, i)}: {reason}")
    verify: Check | None = field.metadata.get("check")
    if verify is not None and len(problems) == before and value is not None:
        reason = verify(value)
        if reason is not None:
            problems.append(f"{path}: {reason}")
    return value


def _convert_dataclass(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    where = path or "(top level)"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where}: must be a mapping, got {type(data).__name__}")
        return None
    start = len(problems)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    hints = typing.get_type_hints(cls)
    _report_unknown_keys(data, list(fields), path, problems)
    values: dict[str, Any] = {}
    clean: dict[str, Any] = {}  # what the cross-field rules may look at
    for name, field in fields.items():
        field_path = _join(path, name)
        if name in data:
            before = len(problems)
            values[name] = _convert_field(field, hints[name], data[name], field_path, problems)
            if len(problems) == before:
                clean[name] = values[name]
        elif field.default is not dataclasses.MISSING:
            clean[name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            clean[name] = field.default_factory()
        else:
            problems.append(f"{field_path}: required")
    rules: Rules | None = getattr(cls, "schema_rules", None)
    if rules is not None:
        problems.extend(f"{_join(path, at) if at else where}: {reason}" for at, reason in rules(clean))
    if len(problems) > start:
        return None
    return _construct(cls, values, path, problems)


def _report_unknown_keys(data: dict[Any, Any], known: list[str], path: str, problems: list[str]) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{_join(path, str(key))}: unknown key{hint}")


def _construct(cls: type, values: dict[str, Any], path: str, problems: list[str]) -> Any:
    where = path or "(top level)"
    try:
        return cls(**values)
    except Invalid as exc:  # the dataclass's own rules, each at its path
        problems.extend(f"{_join(path, at) if at else where}: {reason}" for at, reason in exc.problems)
        return None
    except ValueError as exc:  # a cross-field rule in __post_init__
        problems.append(f"{where}: {exc}")
        return None
