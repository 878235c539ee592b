"""Summarise the seeds of one recipe: per-seed finals and drops, mean and standard deviation.

    python experiments/summarize.py runs/default-s0 runs/default-s1 runs/default-s2 \
        --json report/results.json --markdown report/default_seeds.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from avalanche_onehead.cli import fail


BEGIN, END = "<!-- seeds:begin -->", "<!-- seeds:end -->"


def replace_block(path: Path, table: str) -> None:
    """Put ``table`` between the markers of ``path`` (checked before anything is written)."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{path}: needs one '{BEGIN}' line followed by one '{END}' line")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


def main(argv=None) -> int:
    from avalanche_onehead import rules
    from avalanche_onehead.results import seed_summary, summary_markdown

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders of the same recipe, one per seed")
    p.add_argument("--json", default=None, help="write the summary here (e.g. report/results.json)")
    p.add_argument("--markdown", default=None, help="write the seeds table here")
    p.add_argument("--into", default=None, metavar="FILE.md",
                   help="replace the block between '<!-- seeds:begin -->' and '<!-- seeds:end -->' in FILE.md "
                        "with the table (report.md, README.md)")
    p.add_argument("--drop-limit", type=float, default=rules.DROP_BAR_PCT,
                   help=f"the challenge's drop bar in %% (default {rules.DROP_BAR_PCT:g})")
    args = p.parse_args(argv)
    with fail():
        summary = seed_summary(args.runs)
        table = summary_markdown(summary, args.drop_limit)
        if args.into:
            replace_block(Path(args.into), table)
        for path, text in ((args.json, json.dumps(summary, indent=2)), (args.markdown, table)):
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(text)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
