"""Shared command-line behaviour: one clear error line and a non-zero exit."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from .errors import OneHeadError


@contextmanager
def fail(code: int = 2):
    """Turn the errors a user can cause into ``error: <file>: <problem>`` and exit ``code``."""
    from benchmarks.errors import DatasetError

    try:
        yield
    except (DatasetError, OneHeadError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(code) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
