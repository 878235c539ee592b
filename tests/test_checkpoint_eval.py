"""Self-contained checkpoints and the TA's ``eval.py`` command."""
from __future__ import annotations

import avalanche_onehead.commands.evaluate
from avalanche_onehead import commands

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avalanche_onehead.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from avalanche_onehead.errors import CheckpointError
from avalanche_onehead.model import create_model
from benchmarks import load_split

REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def _load_eval_module():
    return commands.evaluate


def _meta(root: Path) -> dict:
    sets = {t: load_split(root, t, "train") for t in ("seg", "det", "cls")}
    return dict(
        classes={t: list(ds.classes) for t, ds in sets.items()},
        class_keys={t: list(ds.class_keys) for t, ds in sets.items()},
        image_size=SIZE,
        data={"root": str(root), "synthetic": True, "seed": 0},
        provenance={"test": True},
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(synthetic_root, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(pretrained=False, head_channels=64)  # a non-default config must round-trip
    model.mean, model.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, **_meta(synthetic_root))
    return path


def test_round_trip_gives_identical_outputs(tiny_checkpoint, synthetic_root):
    torch.manual_seed(0)
    model = create_model(pretrained=False, head_channels=64).eval()
    loaded, meta = load_checkpoint(tiny_checkpoint)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    for task in ("seg", "det", "cls"):
        assert torch.equal(a[task], b[task]), task
    # everything needed travels inside the one file, readable with weights_only=True
    payload = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert payload["format"] == "avalanche-onehead" and payload["image_size"] == SIZE
    assert payload["class_keys"]["det"] == ["1", "14", "39", "42", "52", "65", "67", "73", "74", "88"]  # COCO ids
    assert "category_ids" not in payload  # the same ids, written twice before
    assert len(payload["classes"]["seg"]) == 21 and len(payload["classes"]["cls"]) == 10
    assert payload["data"] == {"root": str(synthetic_root), "synthetic": True, "seed": 0}
    assert meta["provenance"] == {"test": True}


def test_round_trip_after_a_training_step(tmp_path):
    """Changed weights (incl. frozen-BN affine params) are what comes back, not a fresh init."""
    torch.manual_seed(1)
    model = create_model(pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    out = model(torch.randn(2, 3, SIZE, SIZE))
    sum(v.float().pow(2).mean() for v in out.values()).backward()
    opt.step()
    model.eval()
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, classes={})
    assert path.is_file() and not list(path.parent.glob(".m.pt.*"))  # no temporary left behind
    loaded, _ = load_checkpoint(path)
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x)["det"], loaded(x)["det"])


def _foreign_dict(tmp):
    p = tmp / "foreign.pt"
    torch.save({"a": 1}, p)
    return p


def _text(tmp):
    p = tmp / "notes.pt"
    p.write_text("this is not a checkpoint\nsecond line\n")
    return p


def _missing(tmp):
    return tmp / "nope" / "model.pt"


def _pickled_module(tmp):
    p = tmp / "module.pt"
    torch.save(torch.nn.Linear(2, 2), p)  # full pickle: refused by weights_only loading
    return p


def _newer_version(tmp):
    p = tmp / "future.pt"
    torch.save({"format": "avalanche-onehead", "version": 99}, p)
    return p


def _folder(tmp):
    p = tmp / "a_folder.pt"
    p.mkdir()
    return p


BAD = {"foreign dict": (_foreign_dict, "not an avalanche-onehead checkpoint"),
       "text file": (_text, "not a readable checkpoint"),
       "missing path": (_missing, "not found"),
       "pickled module": (_pickled_module, "not a readable checkpoint"),
       "newer version": (_newer_version, "newer"),
       "folder": (_folder, "not found")}


@pytest.mark.parametrize("case", list(BAD))
def test_foreign_files_raise_one_line_checkpoint_error(case, tmp_path):
    make, needle = BAD[case]
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg and needle in msg
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_weights_that_do_not_fit_the_config_raise(tiny_checkpoint, tmp_path):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["model_config"]["head_channels"] = 32
    bad = tmp_path / "mismatch.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def _run_eval(capsys, argv):
    mod = _load_eval_module()
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def _check_fraction(v):
    assert type(v) is float and 0.0 <= v <= 1.0, v


def test_eval_all_tasks_prints_the_three_metrics(tiny_checkpoint, synthetic_root, capsys, tmp_path):
    out_file = tmp_path / "res.json"
    res = _run_eval(capsys, ["--weights", str(tiny_checkpoint), "--tasks", "all", "--cpu", "--workers", "0",
                             "--quiet", "--out", str(out_file)])
    for key in ("mAP", "mIoU", "Top-1"):
        _check_fraction(res[key])
    _check_fraction(res["mAP50"])
    _check_fraction(res["pixel_acc"])
    assert res["split"] == "val" and res["weights"] == str(tiny_checkpoint)
    assert res["data_root"] == str(synthetic_root)  # found through the checkpoint's record
    assert json.loads(out_file.read_text()) == res


def test_eval_only_the_asked_tasks(tiny_checkpoint, synthetic_root, capsys):
    res = _run_eval(capsys, ["--weights", str(tiny_checkpoint), "--tasks", "seg,det", "--cpu", "--workers", "0",
                             "--quiet", "--batch", "5", "--data_root", str(synthetic_root)])
    _check_fraction(res["mAP"])
    _check_fraction(res["mIoU"])
    assert "Top-1" not in res and "cls_per_class" not in res
    assert set(k for k in res if k.endswith("_per_class")) == {"seg_per_class", "det_per_class"}
    assert res["data_root"] == str(synthetic_root)


@pytest.mark.parametrize("argv_tail, needle", [
    (["--tasks", "seg,foo"], "unknown task"),
])
def test_eval_bad_arguments_are_one_error_line(tiny_checkpoint, capsys, argv_tail, needle):
    mod = _load_eval_module()
    with pytest.raises(SystemExit) as info:
        mod.main(["--weights", str(tiny_checkpoint), "--cpu", "--quiet"] + argv_tail)
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_eval_refuses_data_whose_classes_differ(tiny_checkpoint, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["class_keys"]["cls"] = list(reversed(payload["class_keys"]["cls"]))
    other = tmp_path / "other_classes.pt"
    torch.save(payload, other)
    mod = _load_eval_module()
    with pytest.raises(SystemExit) as info:
        mod.main(["--weights", str(other), "--tasks", "cls", "--cpu", "--quiet", "--workers", "0"])
    assert info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "classes" in err[0]


@pytest.mark.parametrize("make", [_missing, _text], ids=["missing", "text"])
def test_eval_bad_weights_in_process(make, tmp_path, capsys):
    mod = _load_eval_module()
    path = make(tmp_path)
    with pytest.raises(SystemExit) as info:
        mod.main(["--weights", str(path), "--cpu", "--quiet"])
    assert info.value.code != 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(path) in err[0]
    assert captured.out == ""  # no half JSON on stdout


def test_eval_cli_bad_weights_exits_non_zero_with_one_error_line(tmp_path):
    bad = _foreign_dict(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--weights", str(bad), "--cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and str(bad) in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
