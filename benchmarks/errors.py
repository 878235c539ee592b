"""The one error type for bad data, always naming the file and the problem."""
from __future__ import annotations

from pathlib import Path


class DatasetError(Exception):
    """A data root, file or annotation that cannot be used; ``str()`` is one line."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
