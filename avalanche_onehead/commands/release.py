"""Release a run's final model as the repository's checkpoint.

    python experiments/release.py runs/report/default-s0            # -> weights/onehead.pt (+ .metrics.json)

Copies RUN/model.pt (checked to be a readable avalanche-onehead checkpoint, with its
provenance: command, seed, commit) and writes beside it the metrics the run measured
after its last stage, which ``eval.py --weights weights/onehead.pt`` must reproduce
(the test suite checks it on the real data).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


from avalanche_onehead.cli import fail


def release(run_dir: Path, out: Path) -> Path:
    from avalanche_onehead.checkpoint import read_checkpoint
    from avalanche_onehead.run_folder import RunFolder

    run = RunFolder(run_dir)
    model = run.model_file
    for f in (model, run.metrics_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (not a finished run folder)")
    payload = read_checkpoint(model)
    metrics = run.read_metrics()
    expected = {
        "run": str(run_dir), "strategy": metrics["strategy"], "seed": metrics["seed"],
        "data_root": metrics.get("data_root"), "provenance": payload.get("provenance", {}),
        "final": metrics["final"], "metric_names": metrics["metric_names"],
        "final_mAP50": metrics.get("final_mAP50"),
        # the whole sequence, so the release documents its forgetting, not only its end point
        "tasks": metrics.get("tasks"), "matrix": metrics.get("matrix"), "baseline": metrics.get("baseline"),
        "drop_pct": metrics.get("drop_pct"), "drop_abs": metrics.get("drop_abs"),
        "train_seconds": metrics.get("train_seconds"), "cache_seconds": metrics.get("cache_seconds"),
        "plan": metrics.get("plan"), "params": metrics.get("params"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.copyfile(model, tmp)
    tmp.replace(out)
    out.with_suffix(".metrics.json").write_text(json.dumps(expected, indent=2))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", default="weights/onehead.pt")
    args = p.parse_args(argv)
    with fail():
        out = release(Path(args.run_dir), Path(args.out))
    print(f"released {args.run_dir}/model.pt -> {out} (+ {out.with_suffix('.metrics.json').name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
