"""Settings dataclasses: built from JSON (unknown keys are one clear error), and the one place
each setting's default and help text are written (:func:`setting`); the command lines make
their flags from them (:func:`avalanche_onehead.cli.add_setting_flags`)."""
from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def setting(default: Any = MISSING, *, help: str, factory: Callable[[], Any] | None = None,
            flag: str | None = None, cli: bool = True, metavar: str | None = None,
            default_text: str | None = None) -> Any:
    """A dataclass field with its help text.  ``flag`` is its command-line name when it is not
    ``--<name-with-dashes>`` (a true-by-default switch is ``--no-...``); ``cli=False``: a setting
    for recipe files only; ``default_text`` says the default where the value alone does not
    (``None`` meaning "the data found")."""
    meta = {"help": help, "flag": flag, "cli": cli, "metavar": metavar, "default_text": default_text}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f) -> Any:
    """A dataclass field's default value (a fresh one for a factory field)."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def defaults(cls: type) -> dict[str, Any]:
    return {f.name: default_of(f) for f in fields(cls)}


def from_known_fields(cls: type[T], d: dict[str, Any], what: str) -> T:
    """``cls(**d)``, refusing keys that are not fields of ``cls`` and naming the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**d)
