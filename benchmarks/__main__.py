"""``python -m benchmarks --data-root DIR``: check that a data root loads, print a JSON summary."""
from __future__ import annotations

import json
import sys

from avalanche_onehead.cli import OneLineParser, fail
from avalanche_onehead.tasks import TASKS, parse_tasks

from .check import check_data
from .stream import resolve_data_root


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--data-root", default=None,
                   help=f"folder holding {', '.join(spec.folder + '/' for spec in TASKS.values())} "
                        "(default: ./data if it exists, else the embedded synthetic benchmark)")
    p.add_argument("--tasks", default="all", help=f"comma-separated subset of {','.join(TASKS)} (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic benchmark")
    p.add_argument("--quick", action="store_true", help="read image headers only, do not decode every image")
    args = p.parse_args(argv)
    try:
        with fail():
            tasks = parse_tasks(args.tasks)
            root = resolve_data_root(args.data_root, args.seed)
            out = {"data_root": str(root.path), "synthetic": root.synthetic,
                   "tasks": check_data(root.path, tasks, deep=not args.quick, progress=True)}
    except SystemExit as e:
        return int(e.code)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
