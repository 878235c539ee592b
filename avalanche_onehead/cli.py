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


def flag_name(f) -> str:
    """A settings field's command-line flag: its own ``flag``, else ``--<name-with-dashes>``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def show_value(v) -> str:
    """A setting's value as one types it: ``1e+05``, ``det=10``, ``seg=4,det=6,cls=12``, ``seg,det,cls``."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return ",".join(f"{k}={show_value(x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def add_setting_flags(parser, cls: type, rules: dict, *, dest_prefix: str = "", shown: dict | None = None,
                      parsers: dict | None = None, notes: dict | None = None) -> dict[str, str]:
    """One flag per command-line field of the dataclass ``cls`` (see :func:`settings.setting`):
    its help text, its type, and its default as the run will really use it.

    ``rules[name]`` checks the typed value as the flag is read (a setting without a rule is
    checked later, with the others); ``parsers[name]`` turns the text into a value where the
    field's type does not say how (a ``dict[str, X]`` field reads ``TASK=X,...``).
    ``shown[name]`` is the default to show when it is not the field's own (``"from the recipe,
    4"``); ``notes[name]`` is appended to the help.  A flag's argparse default is
    ``SUPPRESS``: the namespace holds ``dest_prefix + name`` only for the flags given, which is
    what lets a flag beat a recipe file even when it repeats the default.  Returns
    ``{dest: flag}``."""
    import argparse
    import typing
    from dataclasses import fields

    from .settings import default_of
    from .validation import flag_type, parsed, task_values

    shown, parsers, notes = shown or {}, parsers or {}, notes or {}
    hints = typing.get_type_hints(cls)
    made: dict[str, str] = {}
    for f in fields(cls):
        if not f.metadata.get("cli", False):
            continue
        kind = hints[f.name]
        args = typing.get_args(kind)
        if type(None) in args:  # X | None
            kind = next(a for a in args if a is not type(None))
        name, dest = flag_name(f), dest_prefix + f.name
        default = shown.get(f.name) or f.metadata.get("default_text") or show_value(default_of(f))
        if kind is bool:
            default = f"{'on' if default_of(f) else 'off'}; this flag turns it {'off' if default_of(f) else 'on'}"
        help_text = f"{f.metadata['help']} (default: {default}{'; ' + notes[f.name] if f.name in notes else ''})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            parser.add_argument(name, dest=dest, action="store_const", const=not default_of(f),
                                default=argparse.SUPPRESS, help=help_text)
        else:
            if f.name in parsers:
                parse = parsers[f.name]
            elif typing.get_origin(kind) is dict:
                parse = (lambda value: lambda s: task_values(s, value))(parsed(typing.get_args(kind)[1]))
            else:
                parse = parsed(kind) if kind in (int, float) else str
            rule = rules.get(f.name, lambda v: v)
            parser.add_argument(name, dest=dest, type=flag_type(rule, parse), default=argparse.SUPPRESS,
                                metavar=f.metadata.get("metavar") or f.name.upper(), help=help_text)
        made[dest] = name
    return made
