"""Shared command-line behaviour: one clear error line and a non-zero exit."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from .errors import OneHeadError


def one_line(text: object) -> str:
    """``text`` on one line (a message must never spill into a second stderr line)."""
    return " ".join(str(text).split())


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are the same one line as every other error:
    ``error: --lr: must be a finite number > 0, not 'nan'`` and exit code 2."""

    def error(self, message: str):
        message = message.removeprefix("argument ")
        self.exit(2, f"error: {one_line(message)}\n")


@contextmanager
def fail(code: int = 2):
    """Turn the errors a user can cause into ``error: <file>: <problem>`` and exit ``code``.

    An ``OSError`` (disk full, read-only or unreadable place) names its file and reason.
    """
    from benchmarks.errors import DatasetError

    try:
        yield
    except (DatasetError, OneHeadError, ValueError, FileNotFoundError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(code) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {one_line(where + (e.strerror or str(e) or e.__class__.__name__))}", file=sys.stderr)
        raise SystemExit(code) from None
    except KeyboardInterrupt as e:  # its message, if any, says how to continue
        print(f"interrupted{': ' + one_line(e) if str(e) else ''}", file=sys.stderr)
        raise SystemExit(130) from None
