"""Settings dataclasses built from JSON: unknown keys are one clear error."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_known_fields(cls: type[T], d: dict[str, Any], what: str) -> T:
    """``cls(**d)``, refusing keys that are not fields of ``cls`` and naming the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**d)
