"""Typed configuration: each section of the workflow config is a frozen dataclass, built from
the validated config at the command's boundary (`Section.of`), with its defaults here and
nowhere else in the code. A wrong key fails with the section's name and its known keys."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Self

from lmforge.io.storage import InputError


@dataclasses.dataclass(frozen=True)
class Section:
    SECTION = "config"  # the section's name in the workflow config, for messages

    @classmethod
    def of(cls, values: Section | Mapping[str, Any]) -> Self:
        """`values` as this section: a dataclass passes through, a mapping is checked."""
        return values if isinstance(values, cls) else cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        if not isinstance(values, Mapping):
            raise InputError(f"{cls.SECTION}: expected a mapping, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"{cls.SECTION}: unknown key(s) {unknown}; known: {sorted(known)}")
        missing = sorted(name for name, f in known.items() if name not in values
                         and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise InputError(f"{cls.SECTION}: missing key(s) {missing}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _nested(hints[key], value) for key, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """The section as the config would give it (unset optional keys left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def replace(self, **changes) -> Self:
        return dataclasses.replace(self, **changes)


def _nested(hint, value):
    """A value for a field typed `hint`: sections (alone, optional or in a list) are built."""
    section = _section_type(hint)
    if section is not None and isinstance(value, Mapping):
        return section.from_dict(value)
    if typing.get_origin(hint) is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        if _section_type(item) is not None:
            return [_nested(item, v) for v in value]
    return value


def _section_type(hint) -> type[Section] | None:
    if isinstance(hint, type) and issubclass(hint, Section):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        found = [h for h in typing.get_args(hint) if isinstance(h, type) and issubclass(h, Section)]
        return found[0] if found else None
    return None
