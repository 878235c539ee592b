"""The one error type for bad data, always naming the file and the problem."""
from __future__ import annotations

from pathlib import Path


class DatasetError(Exception):
    """A data root, file or annotation that cannot be used; ``str()`` is one line.

    Raised inside a DataLoader worker, torch re-raises it in the main process as
    ``DatasetError(<the worker's formatted traceback>)``; the traceback's last line
    is this error's own line, so it is taken back from there.
    """

    def __init__(self, path: str | Path, problem: str | None = None):
        if problem is None:
            path, problem = _from_worker_traceback(str(path))
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


def _from_worker_traceback(text: str) -> tuple[str, str]:
    """``"...\\nbenchmarks.errors.DatasetError: /x/a.jpg: corrupt"`` -> ``("/x/a.jpg", "corrupt")``."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else text
    if "DatasetError: " in last:
        last = last.split("DatasetError: ", 1)[1]
    path, sep, problem = last.partition(": ")
    return (path, problem) if sep else ("data", last)
