"""ONNX export and ONNX Runtime inference: same outputs, same metrics, same card."""
from __future__ import annotations

import avalanche_onehead.commands.evaluate
import avalanche_onehead.commands.export
from avalanche_onehead import commands

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avalanche_onehead.checkpoint import read_checkpoint, save_checkpoint
from avalanche_onehead.export import ATOL, META_KEY, RTOL, export_onnx
from avalanche_onehead.model import create_model
from avalanche_onehead.onnx_runtime import OnnxModel, load_model
from benchmarks import load_split

REPO = Path(__file__).resolve().parents[1]
SIZE = 64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory) -> Path:
    """A random model with a non-default head width, pooling and fixed semantic channels read by
    segmentation and classification only (a row-masked output layer), and
    non-trivial BatchNorm statistics, so that folding and the exported config both matter."""
    torch.manual_seed(0)
    model = create_model(pretrained=False, head_channels=64, pool="lse", pool_sharpness=2.0, semantic_channels=16,
                         semantic_readers=["seg", "cls"])
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.mean, model.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    sets = {t: load_split(synthetic_root, t, "train") for t in ("seg", "det", "cls")}
    path = tmp_path_factory.mktemp("onnx") / "tiny.pt"
    save_checkpoint(path, model, classes={t: list(ds.classes) for t, ds in sets.items()},
                    class_keys={t: list(ds.class_keys) for t, ds in sets.items()},
                    image_size=SIZE,
                    data={"root": str(synthetic_root), "synthetic": True, "seed": 0})
    return path


@pytest.fixture(scope="module")
def exported(checkpoint) -> tuple[Path, dict]:
    out = checkpoint.with_suffix(".onnx")
    report = export_onnx(checkpoint, out)
    return out, report


def test_export_is_one_file_carrying_the_checkpoint_metadata(checkpoint, exported):
    import onnx

    path, report = exported
    assert report["opset"] >= 17 and report["outputs"] == ["seg", "det", "cls"]
    assert not list(path.parent.glob("*.data")) and not list(path.parent.glob(".tiny.onnx.*"))
    model = onnx.load(str(path))  # weights inside, no external data
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props[META_KEY])
    payload = read_checkpoint(checkpoint)
    for key in ("model_config", "classes", "class_keys", "normalization", "image_size", "data"):
        assert meta[key] == payload[key], key
    assert meta["onnx"]["batchnorm_folded"] and meta["onnx"]["tolerance"] == {"atol": ATOL, "rtol": RTOL}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]  # dynamic batch only
    assert all(d <= ATOL + RTOL for d in report["max_abs_diff"].values())


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_pytorch_within_the_stated_tolerance(checkpoint, exported, batch):
    torch_model, _ = load_model(checkpoint)
    onnx_model, meta = load_model(exported[0])
    assert isinstance(onnx_model, OnnxModel) and onnx_model.cfg == torch_model.cfg
    assert onnx_model.mean == torch_model.mean and meta["image_size"] == SIZE
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch)) * 2
    with torch.no_grad():
        want = torch_model(x)
    got = onnx_model(x)
    for task in ("seg", "det", "cls"):
        assert got[task].shape == want[task].shape
        torch.testing.assert_close(got[task], want[task], rtol=RTOL, atol=ATOL)
    # the same decoding on both: the same boxes, classes and (up to near-ties) masks
    sizes = [(48, 80)] * batch
    a, b = torch_model.predict(x, sizes), onnx_model.predict(x, sizes)
    for p, q in zip(a, b):
        torch.testing.assert_close(p["cls"], q["cls"], rtol=RTOL, atol=ATOL)
        assert (p["seg"] != q["seg"]).float().mean() < 1e-3
        n = min(len(p["det"].scores), len(q["det"].scores), 10)
        torch.testing.assert_close(p["det"].boxes[:n], q["det"].boxes[:n], rtol=1e-3, atol=1e-2)


def test_eval_gives_the_same_metrics_on_onnx_runtime(checkpoint, exported, capsys):
    mod = commands.evaluate
    results = {}
    for weights in (checkpoint, exported[0]):
        assert mod.main(["--weights", str(weights), "--tasks", "all", "--cpu", "--workers", "0", "--quiet"]) == 0
        results[weights.suffix] = json.loads(capsys.readouterr().out)
    pt, ox = results[".pt"], results[".onnx"]
    assert pt["runtime"] == "pytorch" and ox["runtime"] == "onnxruntime"
    for key in ("mAP", "mAP50", "mIoU", "pixel_acc", "Top-1"):
        assert ox[key] == pytest.approx(pt[key], abs=1e-3), key


def test_compliance_card_times_onnx_runtime_with_the_same_post_processing(exported):
    proc = subprocess.run([sys.executable, "-m", "avalanche_onehead.compliance", "--weights", str(exported[0]),
                           "--runs", "2", "--warmup", "1", "--size", str(SIZE), "--threads", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no third-party warning noise
    card = json.loads(proc.stdout)
    lat = card["latency"]
    assert lat["runtime"] == "onnxruntime" and lat["threads"] == 1 and lat["post_processing"]
    assert set(lat["post_processing_median_ms_by_task"]) == {"seg", "det", "cls"}
    assert card["head"]["ok"] and card["params"]["total"] > 0


def test_compliance_card_measures_both_runtimes_from_a_checkpoint(checkpoint):
    mod = pytest.importorskip("avalanche_onehead.compliance")
    import argparse

    args = argparse.Namespace(weights=str(checkpoint), backbone=None, runtime="both", threads=None, device="cpu",
                              runs=1, warmup=0, size=SIZE, no_latency=False)
    card = mod.run_card(args)
    both = card["latency_by_runtime"]
    assert set(both) == {"pytorch", "onnxruntime"} and card["latency"] == both["pytorch"]
    assert "unfolded_median_ms" in both["pytorch"] and both["onnxruntime"]["runtime"] == "onnxruntime"


def test_compliance_refuses_pytorch_runtime_for_an_onnx_file(exported, capsys):
    from avalanche_onehead.compliance import main

    with pytest.raises(SystemExit) as info:
        main(["--weights", str(exported[0]), "--runtime", "pytorch", "--no-latency"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--runtime pytorch" in err[0]


@pytest.mark.parametrize("case", ["missing weights", "not .onnx", "text file"])
def test_export_bad_input_is_one_error_line_and_writes_nothing(case, checkpoint, tmp_path, capsys):
    weights, out = checkpoint, tmp_path / "m.onnx"
    if case == "missing weights":
        weights = tmp_path / "nope.pt"
    elif case == "not .onnx":
        out = tmp_path / "m.pt"
    else:
        weights = tmp_path / "notes.pt"
        weights.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit) as info:
        commands.export.main(["--weights", str(weights), "--out", str(out)])
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), captured.err
    assert captured.out == "" and not out.exists() and not list(tmp_path.glob(".m.*"))


def test_a_failed_check_leaves_no_file(checkpoint, tmp_path, monkeypatch):
    import avalanche_onehead.export as export
    from avalanche_onehead.errors import CheckpointError

    def differs(path, net, example):
        raise CheckpointError(path, "exported seg output differs")

    monkeypatch.setattr(export, "check_against_torch", differs)
    with pytest.raises(CheckpointError):
        export.export_onnx(checkpoint, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_model_refuses_a_foreign_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    from avalanche_onehead.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no 'avalanche_onehead' metadata"):
        OnnxModel(path)
    (tmp_path / "junk.onnx").write_text("junk")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")


def test_predict_runs_on_the_onnx_export(checkpoint, exported, tmp_path):
    import numpy as np
    from PIL import Image

    from avalanche_onehead.predict import predict_files

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(photo)
    a = predict_files(checkpoint, [photo], tmp_path / "pt")[0]
    b = predict_files(exported[0], [photo], tmp_path / "onnx")[0]
    assert (a["runtime"], b["runtime"]) == ("pytorch", "onnxruntime")
    assert [t["label"] for t in a["classification"]["top3"]] == [t["label"] for t in b["classification"]["top3"]]
    assert all((tmp_path / "onnx" / f"photo{s}").is_file() for s in (".png", ".json", "_mask.png"))


def test_compliance_card_without_weights_describes_the_default_recipes_model(capsys):
    from avalanche_onehead.commands.run import default_recipe
    from avalanche_onehead.compliance import main

    recipe = default_recipe()
    assert main(["--no-latency"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["backbone"] == recipe["backbone"] and card["params_ok"]
    assert card["neck"]["fixed_semantic_channels"] == recipe["model"]["semantic_channels"]
    assert main(["--no-latency", "--backbone", "efficientnet_lite2"]) == 0
    assert json.loads(capsys.readouterr().out)["backbone"] == "efficientnet_lite2"
    # the recipe's 352 semantic channels do not fit Lite0's 320-channel map: one clear line, exit 2
    with pytest.raises(SystemExit) as info:
        main(["--no-latency", "--backbone", "efficientnet_lite0"])
    assert info.value.code == 2 and "320 channels" in capsys.readouterr().err
