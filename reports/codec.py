"""One JSON codec for the reports' dataclasses: a dataclass' fields are its JSON keys, so what is
written and what is read are the class definitions themselves (reports/results.py, reports/figure_rows.py).

Reading: a key the class does not name is kept in its `extra` field (when it has one) and written
back, so a file from a newer writer survives a re-render; a missing key takes the field's default.
Writing: every field, except those with OMIT_WHEN_EMPTY metadata while they are None or empty.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

# a field's metadata: leave it out of the JSON while it is None or empty (a row without variants)
OMIT_WHEN_EMPTY = types.MappingProxyType({"omit_when_empty": True})


def to_json(value: Any) -> Any:
    """Dataclasses (recursively, in lists and dicts) as JSON-ready values; a class with its own
    `to_json` method writes itself."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        custom = getattr(value, "to_json", None)
        if custom is not None:
            return custom()
        return fields_to_json(value)
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def fields_to_json(obj: Any) -> dict[str, Any]:
    """The generic encoding of one dataclass instance (what a custom `to_json` can start from)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "extra":
            continue
        if f.metadata.get("omit_when_empty") and not value:
            continue
        out[f.name] = to_json(value)
    out.update(getattr(obj, "extra", None) or {})
    return out


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """`data` as a `cls`; nested dataclasses (alone, in lists, or optional) are decoded too."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: _decode(hints[k], v) for k, v in data.items() if k in names and k != "extra"}
    if "extra" in names:
        values["extra"] = {k: v for k, v in data.items() if k not in names}
    return cls(**values)


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return from_json(classes[0], value) if classes and isinstance(value, dict) else value
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        return [_decode(item, v) for v in value]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_json(hint, value)
    return value
