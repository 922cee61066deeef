"""Walking pydantic models by path, for config error hints and route conditions."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel


def annotation_at(model: type[BaseModel], path: Sequence[str | int]) -> Any | None:
    """The type found at `path` below `model` (dict keys and list indexes step into values), or None."""
    current: Any = model
    for part in path:
        current = _step(current, part)
        if current is None:
            return None
    return current


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation is, or is Optional of."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        for arg in get_args(annotation):
            if found := model_in(arg):
                return found
    return None


def _step(annotation: Any, part: str | int) -> Any | None:
    if (model := model_in(annotation)) is not None:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field else None
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType, Annotated):
        for arg in get_args(annotation):
            if (found := _step(arg, part)) is not None:
                return found
        return None
    if origin is not None and isinstance(origin, type):
        args = get_args(annotation)
        if issubclass(origin, Mapping) and args:
            return args[-1]
        if issubclass(origin, Sequence) and isinstance(part, int) and args:
            return args[0]
    return None
