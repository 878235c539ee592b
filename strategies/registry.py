"""One registry of remedies; ``--strategy`` names are joined with ``+``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Remedy:
    name: str
    summary: str
    make: Callable[..., list[Any]]  # (**options) -> Avalanche plugins


REMEDIES: dict[str, Remedy] = {
    r.name: r
    for r in (
        Remedy("naive", "no remedy: fine-tune on each task in turn (the forgetting lower bound)",
               lambda **_: []),
    )
}


def parse_strategy(spec: str) -> list[str]:
    """``"ewc+replay"`` -> ``["ewc", "replay"]``; unknown or repeated names are one clear error."""
    names = [n.strip().lower() for n in spec.split("+") if n.strip()]
    known = ", ".join(REMEDIES)
    if not names:
        raise ValueError(f"empty --strategy; known remedies: {known}")
    unknown = [n for n in names if n not in REMEDIES]
    if unknown:
        raise ValueError(f"unknown remedy {unknown[0]!r} in --strategy {spec!r}; known remedies: {known}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"remedy {repeated[0]!r} named twice in --strategy {spec!r}")
    if "naive" in names and len(names) > 1:
        raise ValueError("'naive' means no remedy and cannot be combined with others")
    return names


def build_plugins(spec: str, **options: Any) -> list[Any]:
    plugins: list[Any] = []
    for name in parse_strategy(spec):
        plugins += REMEDIES[name].make(**options)
    return plugins
