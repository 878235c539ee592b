"""What a hostile (or careless) user types or feeds in, met where the user meets it: the CLI.

Every bad input must end in exactly ONE stderr line ``error: <file or flag>: <problem>``,
exit code 2, and nothing written or overwritten.
"""
from __future__ import annotations

import avalanche_onehead.commands.compare
import avalanche_onehead.commands.evaluate
from avalanche_onehead import commands

import errno
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import load_split
from benchmarks.__main__ import main as check_main
from benchmarks.readers import open_rgb

TINY = ["--image-size", "64", "--epochs", "1", "--max-images", "2", "--batch-size", "2", "--workers", "0",
        "--no-pretrained", "--no-progress", "--device", "cpu", "--strategy", "naive"]

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what "nothing written" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error(capsys, call, *names: str) -> str:
    """``call()`` exits with code 2 after exactly one ``error:`` line naming every one of ``names``."""
    with pytest.raises(SystemExit) as e:
        code = call()
        raise SystemExit(code)  # a main() that returns its exit code
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert e.value.code == 2, out.err
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def data(synthetic_root, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    return root


# ---------------------------------------------------------------------------------------------
# 3. nonsense numbers and names on the command line
# ---------------------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--epochs", "-1"], "--epochs"), (["--epochs", "0"], "--epochs"), (["--epochs", "seg=abc"], "--epochs"),
    (["--epochs", "seg=2,seg=3"], "--epochs"), (["--epochs", "seg"], "--epochs"),
    (["--epochs", "depth=2"], "--epochs"),
    (["--image-size", "7"], "--image-size"), (["--image-size", "0"], "--image-size"),
    (["--image-size", "-64"], "--image-size"), (["--image-size", "100000"], "--image-size"),
    (["--image-size", "big"], "--image-size"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "-0.1"], "--lr"), (["--lr", "0"], "--lr"),
    (["--max-images", "0"], "--max-images"), (["--max-images", "-5"], "--max-images"),
    (["--batch-size", "0"], "--batch-size"), (["--workers", "-1"], "--workers"), (["--seed", "-3"], "--seed"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device"),
    (["--device", "toaster"], "--device"), (["--device", "meta"], "--device"),
    (["--strategy", "bogus"], "--strategy"), (["--strategy", "ewc+ewc"], "--strategy"),
    (["--order", "seg,seg"], "--order"), (["--tasks", "depth"], "--tasks"),
    (["--backbone", "no_such_net"], "--backbone"),
    (["--ewc-lambda", "nan"], "--ewc-lambda"), (["--replay-per-step", "11"], "--replay-per-step"),
    (["--lwf-temperature", "0"], "--lwf-temperature"), (["--ewc-decay", "1.5"], "--ewc-decay"),
    (["--strategy", "replay", "--replay-mem", "1", "--replay-per-step", "3"], "--replay"),
    (["--gpm-threshold", "1.5"], "--gpm-threshold"), (["--gpm-views", "0"], "--gpm-views"),
    (["--gpm-layer-thresholds", "neck.lateral=1.5"], "--gpm-layer-thresholds"),
    (["--gpm-layer-thresholds", "backbone=0"], "--gpm-layer-thresholds"),
    (["--gpm-layer-thresholds", "neck.lateral"], "--gpm-layer-thresholds"),
    (["--no-such-flag"], "--no-such-flag"),
]


@pytest.mark.parametrize("flags,flag", BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_run_refuses_nonsense_flags(flags, flag, run_cli, synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    one_error(capsys, lambda: run_cli.main(["--data-root", str(synthetic_root), "--out", str(out), *flags]), flag)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 4. config files
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"lr": "fast"}, "'lr'"), ({"epochs": [1, 2]}, "'epochs'"), ({"strategy": 3}, "'strategy'"),
    ({"model": {"depth": 3}}, "'model'"), ([{"lr": 0.1}], "JSON list"), ("just text", "JSON str"),
    ({"model": {"backbone": "x"}}, "'model.backbone'"), ({"epochs": {"seg": 0}}, "'epochs.seg'"),
    ({"epochs": {"depth": 2}}, "'epochs'"), ({"remedy": {"ewc_lambda": "big"}}, "'remedy.ewc_lambda'"),
    ({"remedy": {"bogus": 1}}, "'remedy'"), ({"model": {"detection": {"nms_iou": 2}}}, "'model.detection.nms_iou'"),
    ({"model": {"norm": "ln"}}, "'model.norm'"), ({"model": {"head_layers": 5}}, "'model.head_layers'"),
    ({"image_size": 500}, "'image_size'"), ({"lr": float("nan")}, "'lr'"), ({"batch_size": True}, "'batch_size'"),
    ({"task_weights": {"seg": -1}}, "'task_weights.seg'"), ({"order": "seg,xyz"}, "'order'"),
    ({"learning_rate": 1}, "learning_rate"), ({"model": [1]}, "'model'"), ({"pretrained": "yes"}, "'pretrained'"),
    ({"strategy": "replay", "remedy": {"replay_mem_per_task": 1, "replay_per_step": 2}}, "'remedy'"),
    ({"remedy": {"gpm_threshold": 0}}, "'remedy.gpm_threshold'"),
    ({"remedy": {"gpm_layer_thresholds": {"head": -1}}}, "'remedy.gpm_layer_thresholds.head'"),
    ({"remedy": {"gpm_layer_thresholds": {"neck..x": 0}}}, "'remedy.gpm_layer_thresholds'"),
    ({"strategy": "gpm", "model": {"norm": "gn"}}, "'strategy'"),
    ({"strategy": "ewc+lwf", "plan": {"cls": {"remedies": ["gpm"]}}}, "'plan'"),
    ({"plan": {"cls": {"remedies": "gpm"}}}, "'plan.cls.remedies'"),
    ({"plan": {"cls": {"views": 2, "mosaic_views": 1}}}, "'plan'"),
    ({"plan": {"det": {"views": 2, "mosaic_views": 2}}}, "'plan.det'"),
    ({"model": {"pool": "max"}}, "'model.pool'"), ({"model": {"pool_sharpness": 0}}, "'model.pool_sharpness'"),
    ({"model": {"detection": {"balance_boxes": "yes"}}}, "'model.detection.balance_boxes'"),
    ({"model": {"detection": {"center_fraction": -0.1}}}, "'model.detection.center_fraction'"),
    ({"model": {"semantic_channels": -1}}, "'model.semantic_channels'"),
    ({"model": {"semantic_channels": 1.5}}, "'model.semantic_channels'"),
    ({"model": {"semantic_channels": 8, "semantic_readers": ["depth"]}}, "'model.semantic_readers'"),
    ({"model": {"semantic_channels": 8, "semantic_readers": "cls"}}, "'model.semantic_readers'"),
    ({"model": {"semantic_readers": ["cls"]}}, "'model.semantic_readers'"),
]


@pytest.mark.parametrize("doc,field", BAD_CONFIGS, ids=lambda v: json.dumps(v)[:40] if not isinstance(v, str) else None)
def test_run_refuses_bad_config_files(doc, field, run_cli, synthetic_root, tmp_path, capsys):
    cfg, out = tmp_path / "recipe.json", tmp_path / "run"
    cfg.write_text(json.dumps(doc))
    one_error(capsys, lambda: run_cli.main(["--data-root", str(synthetic_root), "--config", str(cfg),
                                            "--out", str(out)]), "recipe.json", field)
    assert not out.exists()


def test_a_config_file_may_give_epochs_as_one_number(run_cli, synthetic_root, tmp_path):
    cfg = tmp_path / "recipe.json"
    cfg.write_text(json.dumps({"epochs": 3, "order": "cls,seg"}))
    made = run_cli.make_config(run_cli.parse_args(["--data-root", str(synthetic_root), "--config", str(cfg)]))
    assert made.order == ["cls", "seg"] and made.epochs == {"cls": 3, "seg": 3}


# ---------------------------------------------------------------------------------------------
# 2. --out never reuses or clobbers a folder
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def finished_run(tmp_path) -> Path:
    """What a finished run folder holds, as far as refusing to reuse it goes."""
    run = tmp_path / "finished"
    run.mkdir()
    for name, text in (("config.json", '{"strategy": "naive"}'), ("metrics.json", "{}"), ("model.pt", "w"),
                       ("resume.pt", "s"), ("log.txt", "trained\n")):
        (run / name).write_text(text)
    return run


def test_out_refuses_a_finished_run_and_keeps_it_intact(run_cli, synthetic_root, finished_run, capsys):
    before = snapshot(finished_run)
    one_error(capsys, lambda: run_cli.main(["--data-root", str(synthetic_root), "--out", str(finished_run), *TINY]),
              "--out", finished_run, "not empty", "--overwrite")
    assert snapshot(finished_run) == before


def test_overwrite_is_refused_for_a_folder_that_is_no_run(run_cli, synthetic_root, tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    one_error(capsys, lambda: run_cli.main(["--data-root", str(synthetic_root), "--out", str(precious),
                                            "--overwrite", *TINY]), "--out", "not a run folder")
    assert (precious / "chapter1.tex").read_text() == "years of work"


def test_a_failing_overwrite_leaves_the_old_run_alone(run_cli, data, finished_run, capsys):
    """Bad data is found before --overwrite clears anything."""
    mask = data / "mini_voc_seg" / "train" / "SegmentationClass" / "syn_train_0000.png"
    with Image.open(mask) as m:
        m.convert("RGB").save(mask)
    before = snapshot(finished_run)
    one_error(capsys, lambda: run_cli.main(["--data-root", str(data), "--out", str(finished_run), "--overwrite",
                                            *TINY]), mask)
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_out_that_cannot_be_a_folder(where, run_cli, synthetic_root, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = {"a file": blocker, "under a file": blocker / "run", "read-only": tmp_path / "ro" / "run"}[where]
    if where == "read-only":  # tests run as root, who may write anywhere: the refusal is simulated
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    before = snapshot(tmp_path)
    one_error(capsys, lambda: run_cli.main(["--data-root", str(synthetic_root), "--out", str(out), *TINY]),
              "--out", out)
    assert snapshot(tmp_path) == before


def test_resume_takes_no_other_settings(run_cli, finished_run, capsys):
    before = snapshot(finished_run)
    one_error(capsys, lambda: run_cli.main(["--resume", str(finished_run), "--epochs", "3"]), "--resume", "--epochs")
    assert snapshot(finished_run) == before


# ---------------------------------------------------------------------------------------------
# 1. bad data: found before a run folder exists, or turned back into one line from a worker
# ---------------------------------------------------------------------------------------------

def _bad_data_cases():
    import test_bad_input as t

    # a truncated JPEG has a sound header: only decoding finds it (the worker test below)
    return [c for c in t.CASES if c is not t.truncated_seg_image]


@pytest.mark.parametrize("case", _bad_data_cases(), ids=lambda c: c.__name__)
def test_run_checks_the_data_before_making_a_run_folder(case, run_cli, data, tmp_path, capsys, monkeypatch):
    import test_bad_input as t

    path, _ = t._apply(case, data, monkeypatch)
    out = tmp_path / "run"
    root = path if case is t.missing_root else data
    i = TINY.index("--max-images")
    every_image = TINY[:i] + TINY[i + 2:]  # the broken file may be any of them
    one_error(capsys, lambda: run_cli.main(["--data-root", str(root), "--out", str(out), *every_image]), path)
    assert not out.exists()


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def test_a_worker_error_is_one_line_and_leaves_no_run_folder(run_cli, data, tmp_path, capsys):
    img = _truncate(data / "mini_voc_seg" / "train" / "JPEGImages" / "syn_train_0001.jpg")
    out = tmp_path / "run"
    argv = ["--data-root", str(data), "--out", str(out), "--tasks", "seg", *TINY, "--workers", "1"]
    one_error(capsys, lambda: run_cli.main(argv), img, "corrupt")
    assert not out.exists()


def test_sixteen_bit_png_loads_as_its_grey_levels(data, capsys):
    img = data / "imagenette_160" / "train" / "n90000001" / "deep.png"
    levels = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(levels).save(img)
    with Image.open(img) as im:
        assert im.mode.startswith("I")
    rgb = np.asarray(open_rgb(img))
    want = np.rint(levels / 257.0)
    assert rgb.shape == (64, 64, 3) and np.abs(rgb[..., 0] - want).max() <= 1
    assert rgb.min() == 0 and rgb.max() == 255  # not all white
    assert check_main(["--data-root", str(data), "--tasks", "cls"]) == 0


def test_dropped_boxes_are_counted_by_the_dataset_check(data, capsys):
    path = data / "mini_coco_det" / "annotations" / "COCO_train.json"
    doc = json.loads(path.read_text())
    first = doc["images"][0]["id"]
    mine = [a for a in doc["annotations"] if a["image_id"] == first]
    bad = [[float("nan"), 1, 5, 5], [10, 10, -4, 5], [10, 10, 0, 0], [1e6, 1e6, 10, 10], [5, 5, 0.4, 8]]
    for box, ann in zip(bad, mine * len(bad)):
        doc["annotations"].append({**ann, "id": 10**6 + len(doc["annotations"]), "bbox": box})
    path.write_text(json.dumps(doc))  # NaN is written as the JSON extension NaN, which Python reads
    assert check_main(["--data-root", str(data), "--tasks", "det", "--quick"]) == 0
    report = json.loads(capsys.readouterr().out)
    dropped = report["tasks"]["det"]["splits"]["train"]["dropped_boxes"]
    assert dropped == {"total": 5, "not_finite": 1, "non_positive_size": 2, "outside_or_tiny": 2}
    ds = load_split(data, "det", "train")
    idx = next(i for i, s in enumerate(ds.samples) if s[0] == first)
    _, raw = ds.load(idx)
    assert len(raw["boxes"]) == len(mine) and torch.isfinite(raw["boxes"]).all()


# ---------------------------------------------------------------------------------------------
# 7. checkpoints, resume state and eval.py outputs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """An untrained but complete checkpoint of the synthetic benchmark (64 px)."""
    from avalanche_onehead.checkpoint import save_checkpoint
    from avalanche_onehead.model import ModelConfig, OneHeadNet

    model = OneHeadNet(ModelConfig(pretrained=False))
    sets = {t: load_split(synthetic_root, t, "train") for t in ("seg", "det", "cls")}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model,
                           classes={t: ds.classes for t, ds in sets.items()},
                           class_keys={t: ds.class_keys for t, ds in sets.items()},
                           image_size=64,
                           data={"root": str(synthetic_root), "synthetic": True, "seed": 0})


@pytest.fixture(scope="module")
def eval_cli():
    return commands.evaluate


class Hostile:
    """Unpickling this would run a command; ``weights_only`` loading must refuse it."""

    marker = ""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _damaged(src: Path, dst: Path, how: str, marker: Path) -> Path:
    if how == "truncated":
        data = src.read_bytes()
        dst.write_bytes(data[: len(data) // 2])
    elif how == "hostile":
        Hostile.marker = str(marker)
        torch.save({"format": "avalanche-onehead", "payload": Hostile()}, dst)
    elif how == "not a dict":
        torch.save([1, 2, 3], dst)
    else:  # drop one entry
        payload = torch.load(src, map_location="cpu", weights_only=True)
        del payload[how]
        torch.save(payload, dst)
    return dst


@pytest.mark.parametrize("how", ["normalization", "state_dict", "model_config", "image_size", "classes",
                                 "truncated", "hostile", "not a dict"])
def test_eval_refuses_a_damaged_checkpoint(how, eval_cli, checkpoint, synthetic_root, tmp_path, capsys):
    bad = _damaged(checkpoint, tmp_path / "bad.pt", how, tmp_path / "pwned")
    one_error(capsys, lambda: eval_cli.main(["--weights", str(bad), "--data_root", str(synthetic_root),
                                             "--tasks", "cls", "--workers", "0", "--quiet"]), bad)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("where", ["missing folder", "a folder", "read-only"])
def test_eval_out_is_checked_before_the_evaluation(where, eval_cli, tmp_path, capsys, monkeypatch):
    out = {"missing folder": tmp_path / "nowhere" / "r.json", "a folder": tmp_path,
           "read-only": tmp_path / "ro" / "r.json"}[where]
    if where == "read-only":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    # the weights do not even exist: the --out check must come first
    one_error(capsys, lambda: eval_cli.main(["--weights", str(tmp_path / "none.pt"), "--out", str(out)]),
              "--out", out)


@pytest.mark.parametrize("flags,flag", [(["--batch", "0"], "--batch"), (["--workers", "-1"], "--workers"),
                                        (["--device", "toaster"], "--device"), (["--tasks", "depth"], "--tasks")])
def test_eval_refuses_nonsense_flags(flags, flag, eval_cli, checkpoint, capsys):
    one_error(capsys, lambda: eval_cli.main(["--weights", str(checkpoint), *flags]), flag)


def test_eval_worker_error_is_one_line(eval_cli, checkpoint, data, capsys):
    img = _truncate(data / "mini_voc_seg" / "val" / "JPEGImages" / "syn_val_0002.jpg")
    one_error(capsys, lambda: eval_cli.main(["--weights", str(checkpoint), "--data_root", str(data), "--tasks",
                                             "seg", "--workers", "1", "--quiet"]), img)


@pytest.fixture
def stopped_run(run_cli, synthetic_root, checkpoint, tmp_path) -> Path:
    """A run folder as a kill after stage 1 leaves it: config, stage checkpoint, resume state."""
    run = tmp_path / "stopped"
    run.mkdir()
    cfg = run_cli.make_config(run_cli.parse_args(["--data-root", str(synthetic_root), "--out", str(run), *TINY]))
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    shutil.copy(checkpoint, run / "stage1_seg.pt")
    torch.save({"progress": {"done": 1, "matrix": [[0.1, 0.0, 0.1]], "extras": [{}], "stage_seconds": {"seg": 1.0}},
                "remedies": {}}, run / "resume.pt")
    return run


@pytest.mark.parametrize("how", ["truncated", "hostile", "not a dict", "no progress", "done 0", "done 5",
                                 "matrix rows", "stage checkpoint missing", "config list", "config lr"])
def test_resume_refuses_a_damaged_run_folder(how, run_cli, stopped_run, tmp_path, capsys):
    state = stopped_run / "resume.pt"
    named = state
    good = torch.load(state, weights_only=True)
    if how in ("truncated", "hostile", "not a dict"):
        _damaged(state, state, how, tmp_path / "pwned")
    elif how == "no progress":
        torch.save({"remedies": {}}, state)
    elif how.startswith("done"):
        good["progress"]["done"] = int(how.split()[1])
        torch.save(good, state)
    elif how == "matrix rows":
        good["progress"]["matrix"] = []
        torch.save(good, state)
    elif how == "stage checkpoint missing":
        (stopped_run / "stage1_seg.pt").unlink()
        named = stopped_run / "stage1_seg.pt"
    else:
        named = stopped_run / "config.json"
        doc = json.loads(named.read_text())
        named.write_text(json.dumps([doc] if how == "config list" else {**doc, "lr": "fast"}))
    before = snapshot(stopped_run)
    one_error(capsys, lambda: run_cli.main(["--resume", str(stopped_run), "--no-progress"]), named)
    assert snapshot(stopped_run) == before
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------
# 8. disk full while writing the resume state
# ---------------------------------------------------------------------------------------------

def _disk_full_at(monkeypatch, prefix: str) -> None:
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if Path(f).name.startswith(prefix):
            with open(f, "wb") as part:  # as a real full disk does: part of the file, then the error
                part.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)


def test_disk_full_on_resume_pt_keeps_the_finished_stage_resumable(run_cli, synthetic_root, tmp_path, capsys,
                                                                   monkeypatch):
    out = tmp_path / "run"
    argv = ["--data-root", str(synthetic_root), "--out", str(out), "--tasks", "seg,cls", *TINY]
    with monkeypatch.context() as mp:
        _disk_full_at(mp, ".resume.pt")
        line = one_error(capsys, lambda: run_cli.main(argv), out / "resume.pt", "No space left on device",
                         "--resume", "after stage 1")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")], line
    assert (out / "stage1_seg.pt").is_file() and (out / "resume_stage1.pt").is_file()
    assert run_cli.main(["--resume", str(out), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"] == ["seg", "cls"] and len(metrics["matrix"]) == 2


def test_disk_full_on_the_first_state_file_leaves_nothing(run_cli, synthetic_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = ["--data-root", str(synthetic_root), "--out", str(out), "--tasks", "seg", *TINY]
    _disk_full_at(monkeypatch, ".resume_")  # the epoch states and the first stage state
    one_error(capsys, lambda: run_cli.main(argv), "resume_stage1.pt", "No space left", "start the run again")
    assert not out.exists()  # nothing resumable was left, so nothing at all is


def test_disk_full_after_the_last_epoch_repeats_only_the_end_of_the_stage(run_cli, synthetic_root, tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "run"
    argv = ["--data-root", str(synthetic_root), "--out", str(out), "--tasks", "seg", *TINY]
    with monkeypatch.context() as mp:
        _disk_full_at(mp, ".resume_stage1.pt")
        one_error(capsys, lambda: run_cli.main(argv), "resume_stage1.pt", "No space left",
                  "repeats only the end of stage 1")
    assert (out / "resume_epoch.pt").is_file()
    assert run_cli.main(["--resume", str(out), "--no-progress"]) == 0
    assert (out / "metrics.json").is_file() and not (out / "resume_epoch.pt").exists()


# ---------------------------------------------------------------------------------------------
# 9. compare.py
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def compare_cli(monkeypatch):
    import avalanche_onehead.commands.run

    def must_not_train(argv=None):
        raise AssertionError(f"trained {argv}")
    monkeypatch.setattr(avalanche_onehead.commands.run, "main", must_not_train)
    return commands.compare


@pytest.mark.parametrize("strategies,run_args,flag", [("naive,bogus", [], "bogus"),
                                                      ("ewc+replay,replay+ewc", [], "same strategy"),
                                                      (",", [], "--strategies"),
                                                      ("naive", ["--epochs", "0"], "--epochs"),
                                                      ("naive", ["--lr", "nan"], "--lr")])
def test_compare_checks_every_strategy_before_training_any(strategies, run_args, flag, compare_cli, synthetic_root,
                                                           tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["--strategies", strategies, "--out", str(out), "--", "--data-root", str(synthetic_root), *run_args]
    one_error(capsys, lambda: compare_cli.main(argv), flag)
    assert not out.exists()


@pytest.mark.parametrize("drop", ["final", "drop_pct", "stage_seconds", "tasks", "whole"])
def test_compare_refuses_a_metrics_file_missing_keys(drop, compare_cli, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    m = {"strategy": "naive", "tasks": ["seg"], "metric_names": {"seg": "mIoU"}, "baseline": {"seg": 0.3},
         "final": {"seg": 0.2}, "drop_pct": {"seg": 33.3}, "train_seconds": 1.0, "stage_seconds": {"seg": 1.0}}
    (run / "metrics.json").write_text(json.dumps([m] if drop == "whole" else {k: v for k, v in m.items() if k != drop}))
    one_error(capsys, lambda: compare_cli.main(["--runs", str(run), "--out", str(tmp_path / "cmp")]),
              run / "metrics.json")
    assert not (tmp_path / "cmp").exists()
