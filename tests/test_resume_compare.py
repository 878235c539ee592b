"""End to end on the synthetic benchmark: run folder contents, resume after a kill, compare.py.

One uninterrupted ``ewc+replay+lwf`` run (A) and the same run (B) stopped by a Ctrl-C in
the second epoch of stage 2 and resumed in a fresh process; both are tiny (64 px, 6 images
per split, batches of 2, 1/2/1 epochs, random init) and shared by all tests here.
"""
from __future__ import annotations

import avalanche_onehead.commands.compare
import avalanche_onehead.commands.fork
from avalanche_onehead import commands

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from avalanche_onehead.plugins import WarmupCosinePlugin

REPO = Path(__file__).resolve().parents[1]
STRATEGY = "ewc+replay+lwf"
ORDER = ["seg", "det", "cls"]
EPOCHS = "seg=1,det=2,cls=1"
# the live-image recipe (one view per image, no feature cache), so that the iteration counts below
# are those of 6 images in batches of 2
RUN_ARGS = ["--config", str(REPO / "experiments" / "configs" / "finetune-ewc-lwf.json"), "--strategy", STRATEGY, "--image-size", "64", "--epochs", EPOCHS, "--max-images", "6",
            "--batch-size", "2", "--workers", "0", "--no-pretrained", "--no-progress", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def compare_cli():
    return commands.compare


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_root, run_cli):
    base = tmp_path_factory.mktemp("runs")
    a, b = base / "A", base / "B"
    args = [*RUN_ARGS, "--data-root", str(synthetic_root)]
    assert run_cli.main([*args, "--out", str(a)]) == 0

    # B: the same run, stopped by a Ctrl-C in the second iteration of the second epoch of stage 2
    # (3 iterations per epoch): what is on disk is then what a kill -9 there leaves, stage 1's
    # checkpoint and resume state and the state of stage 2 after its first epoch
    original = WarmupCosinePlugin.after_training_iteration

    def killed(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 1 and strategy.clock.train_exp_epochs == 1 and self.step >= 4:
            raise KeyboardInterrupt
        return original(self, strategy, **kwargs)

    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(WarmupCosinePlugin, "after_training_iteration", killed)
        with pytest.raises(SystemExit) as exit_info:
            run_cli.main([*args, "--out", str(b)])
    interrupted = SimpleNamespace(
        code=exit_info.value.code, files={p.name for p in b.iterdir()}, stderr=err.getvalue(),
        events={p.name for p in (b / "tb").iterdir()},
        state=torch.load(b / "resume.pt", map_location="cpu", weights_only=True),
        epoch=torch.load(b / "resume_epoch.pt", map_location="cpu", weights_only=True))

    # resumed in a fresh process, like after a real kill
    resumed = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "--resume", str(b),
                              "--no-progress"], capture_output=True, text=True, cwd=base, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # as in this process
    return SimpleNamespace(a=a, b=b, interrupted=interrupted, resumed=resumed)


# ---------------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------------

def test_metrics_json_summary_is_consistent(runs):
    a = runs.a
    for name in ("config.json", "log.txt", "metrics.json", "metrics_detail.json", "matrix.png", "model.pt",
                 "resume.pt", "stage1_seg.pt", "stage2_det.pt", "stage3_cls.pt"):
        assert (a / name).is_file(), name
    m = _metrics(a)
    assert m["strategy"] == STRATEGY and m["tasks"] == ORDER
    assert m["metric_names"] == {"seg": "mIoU", "det": "mAP", "cls": "Top-1"}
    mat = m["matrix"]
    assert len(mat) == 3 and all(len(r) == 3 for r in mat)
    assert all(0.0 <= v <= 1.0 for r in mat for v in r)
    for j, t in enumerate(ORDER):
        b, f = mat[j][j], mat[-1][j]
        assert m["baseline"][t] == b and m["final"][t] == f
        assert m["drop_abs"][t] == pytest.approx(b - f)
        assert m["drop_pct"][t] == pytest.approx(100.0 * (b - f) / b if b > 0 else 0.0)
        assert m[f"Forgetting/{t}"] == pytest.approx(b - f)
        assert m[f"RelForgetting/{t}"] == pytest.approx(100.0 * (b - f) / b if b > 0 else 0.0)
    assert m["BWT"] == pytest.approx(sum(mat[-1][j] - mat[j][j] for j in range(2)) / 2)
    assert m["AvgMetric"] == pytest.approx(sum(mat[-1]) / 3)
    assert len(m["mAP50_matrix"]) == 3 and m["final_mAP50"] == m["mAP50_matrix"][-1]
    assert set(m["stage_seconds"]) == set(ORDER) and m["train_seconds"] > 0
    assert m["synthetic"] is True and m["epochs"] == {"seg": 1, "det": 2, "cls": 1}
    # every stage trained: the weights move from one stage checkpoint to the next
    s1, s2, s3 = (_state(a / f) for f in ("stage1_seg.pt", "stage2_det.pt", "stage3_cls.pt"))
    assert not torch.equal(s1["head.2.weight"], s2["head.2.weight"])
    assert not torch.equal(s2["head.2.weight"], s3["head.2.weight"])
    assert all(torch.equal(v, _state(a / "model.pt")[k]) for k, v in s3.items())


def test_tensorboard_has_scalars_and_the_matrix_image(runs):
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        EventAccumulator,
    )

    ea = EventAccumulator(str(runs.a / "tb"), size_guidance={IMAGES: 0, SCALARS: 0})
    ea.Reload()
    scalars, images = ea.Tags()["scalars"], ea.Tags()["images"]
    for prefix in ("mIoU/", "mAP/", "Top-1/", "Forgetting/", "RelForgetting/", "BWT/", "AvgMetric/"):
        assert any(t.startswith(prefix) for t in scalars), (prefix, scalars)
    m = _metrics(runs.a)
    logged = [e.value for e in ea.Scalars("Forgetting/seg/eval_phase/test_stream")]
    assert len(logged) == 3 and logged[-1] == pytest.approx(m["Forgetting/seg"], abs=1e-6)
    assert [e.value for e in ea.Scalars("BWT/eval_phase/test_stream")][-1] == pytest.approx(m["BWT"], abs=1e-6)
    matrix_tags = [t for t in images if t.startswith("MetricMatrix")]
    assert matrix_tags
    shots = ea.Images(matrix_tags[0])
    assert len(shots) == 3  # one per stage
    assert all(s.width > 100 and s.height > 100 and s.encoded_image_string[:4] == b"\x89PNG" for s in shots)
    assert [s.step for s in shots] == sorted({s.step for s in shots})  # the step axis moves on


def test_tensorboard_has_iteration_losses_rates_class_names_predictions_and_settings(runs):
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    ea = EventAccumulator(str(runs.a / "tb"), size_guidance={IMAGES: 0, SCALARS: 0, TENSORS: 0})
    ea.Reload()
    tags = ea.Tags()
    scalars = tags["scalars"]
    losses = ea.Scalars("Loss_iter/train")
    assert len(losses) == 3 + 6 + 3 and [e.step for e in losses] == list(range(12))  # one per iteration
    assert {"Loss_iter/seg/ce", "Loss_iter/cls/ce"} <= set(scalars)
    assert any(t.startswith("Loss_iter/det/") for t in scalars)
    rates = [t for t in scalars if t.startswith("LR/")]
    assert "LR/backbone" in rates and len(rates) >= 3
    assert all(math.isfinite(e.value) and e.value >= 0 for e in ea.Scalars("LR/backbone"))
    # per-class values by class name, not by index
    per_class = [t for t in scalars if re.match(r"(IoU|AP|Acc)/", t)]
    assert per_class and not [t for t in per_class if re.match(r"(IoU|AP|Acc)/\d+/", t)], per_class[:5]
    assert "IoU/background/eval_phase/test_stream/Task000/Exp000" in scalars
    shots = ea.Images("Predictions/val")
    assert len(shots) == 3 and all(s.encoded_image_string[:4] == b"\x89PNG" and s.width > 300 for s in shots)
    settings = ea.Tensors("settings/text_summary")
    text = settings[0].tensor_proto.string_val[0].decode()
    assert json.loads(text)["strategy"] == STRATEGY and json.loads(text)["epochs"]["det"] == 2


def test_the_run_ends_with_a_summary_and_the_eval_command(runs, synthetic_root):
    out = runs.resumed.stdout
    lines = out[out.index("== summary"):].splitlines()
    m = _metrics(runs.b)
    assert "seg mIoU" in lines[1] and "det mAP" in lines[1] and "cls Top-1" in lines[1]
    for row, (stage, values) in zip(lines[2:5], zip(ORDER, m["matrix"]), strict=True):
        assert row.split()[:2] == ["after", stage] and [float(v) for v in row.split()[2:]] == \
            pytest.approx(values, abs=1e-4)
    assert lines[5].split()[:3] == ["drop", "vs", "base"] and "(bar 5 %)" in lines[6]
    assert any(ln.strip().startswith("training time") for ln in lines)
    assert lines[-1].strip() == (f"evaluate: python eval.py --weights {runs.b / 'model.pt'} "
                                 f"--data_root {synthetic_root} --tasks all")
    assert any("test_stream" in ln and "validation split" in ln for ln in out.splitlines()[:12])


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------

def test_a_stopped_run_leaves_its_finished_stages_and_epochs(runs):
    it = runs.interrupted
    assert it.code == 130
    lines = [ln for ln in it.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: continue with: python ") \
        and lines[0].endswith(f"run.py --resume {runs.b}"), lines
    assert {"config.json", "resume.pt", "stage1_seg.pt", "resume_epoch.pt"} <= it.files
    assert not it.files & {"stage2_det.pt", "stage3_cls.pt", "model.pt", "metrics.json"}
    assert it.epoch["stage"] == 1 and it.epoch["task"] == "det" and it.epoch["epochs_done"] == 1
    assert it.epoch["clock"]["train_iterations"] == 6 and it.epoch["parts"]["warmup"]["step"] == 3
    assert it.epoch["optimizer"]["state"]  # AdamW's moments, not a fresh optimizer
    progress = it.state["progress"]
    assert progress["done"] == 1 and len(progress["matrix"]) == 1
    assert progress["matrix"][0] == _metrics(runs.a)["matrix"][0]
    assert set(it.state["remedies"]) == {"teacher", "ewc", "replay"}  # by registry name
    assert it.state["remedies"]["teacher"]["trained"] == ["seg"]
    assert progress["clock"]["train_iterations"] == 3  # 6 images, batches of 2


def test_resume_reproduces_the_uninterrupted_run(runs):
    res = runs.resumed
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stdout and "in stage 2 (det) after epoch 1/2" in res.stdout
    assert not (runs.b / "resume_epoch.pt").exists()  # the finished stages' states supersede it
    ma, mb = _metrics(runs.a), _metrics(runs.b)
    for key in ("matrix", "mAP50_matrix"):
        for ra, rb in zip(ma[key], mb[key], strict=True):
            assert rb == pytest.approx(ra, abs=1e-6), key
    for key in ("baseline", "final", "drop_pct", "BWT", "AvgMetric"):
        assert mb[key] == pytest.approx(ma[key], abs=1e-6), key
    for name in ("stage1_seg.pt", "stage2_det.pt", "stage3_cls.pt", "model.pt"):
        sa, sb = _state(runs.a / name), _state(runs.b / name)
        assert sa.keys() == sb.keys()
        worst = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel())
        assert worst <= 1e-6, (name, worst)
    # the remedies' final state is the same too; EWC keeps only the RNG state of each Fisher pass
    # (its Fisher of stage 1 was computed again in the resumed process: with lambda = 1e5 a
    # different one would have moved the weights of stages 2 and 3 far beyond 1e-6)
    ra, rb = (torch.load(d / "resume.pt", map_location="cpu", weights_only=True)["remedies"] for d in (runs.a, runs.b))
    assert rb["teacher"] == ra["teacher"] == {"trained": ORDER}
    assert json.loads((runs.a / "config.json").read_text())["remedy"]["ewc_lambda"] == 1e5
    ea, eb = ra["ewc"], rb["ewc"]
    assert set(ea) == {"fisher_rng"} and sorted(ea["fisher_rng"]) == sorted(eb["fisher_rng"]) == [0, 1, 2]
    for t in ea["fisher_rng"]:
        assert torch.equal(ea["fisher_rng"][t]["torch"], eb["fisher_rng"][t]["torch"])


def test_resumed_run_continues_the_logged_step_axis(runs):
    """Metrics of the resumed stages are logged at the same steps as in the uninterrupted run."""
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    def steps(path: Path) -> list[int]:
        ea = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        ea.Reload()
        return [e.step for e in ea.Scalars("AvgMetric/eval_phase/test_stream")]

    new = [p for p in (runs.b / "tb").iterdir() if p.name not in runs.interrupted.events]
    assert len(new) == 1  # the resumed process wrote its own event file
    full = steps(runs.a / "tb")
    assert len(full) == 3 and full == sorted(full) and full[0] > 0
    assert steps(new[0]) == full[1:]


def test_a_stop_in_the_first_stage_resumes_to_the_same_weights(synthetic_root, run_cli, tmp_path, capsys):
    """The case of a long first stage: nothing had finished but epochs."""
    args = ["--strategy", "naive", "--tasks", "seg", "--epochs", "2", "--image-size", "64", "--max-images", "6",
            "--batch-size", "2", "--workers", "0", "--no-pretrained", "--no-progress", "--device", "cpu",
            "--data-root", str(synthetic_root)]
    full, stopped, early = tmp_path / "full", tmp_path / "stopped", tmp_path / "early"
    assert run_cli.main([*args, "--out", str(full)]) == 0
    original = WarmupCosinePlugin.after_training_iteration

    def stop_at(epoch: int):
        def stop(self, strategy, **kwargs):
            if strategy.clock.train_exp_epochs == epoch:
                raise KeyboardInterrupt
            return original(self, strategy, **kwargs)
        return stop

    capsys.readouterr()
    for out, epoch in ((early, 0), (stopped, 1)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(WarmupCosinePlugin, "after_training_iteration", stop_at(epoch))
            with pytest.raises(SystemExit) as e:
                run_cli.main([*args, "--out", str(out)])
        assert e.value.code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 2 and "nothing to resume" in err[0] and err[1].endswith(f"--resume {stopped}"), err
    assert (stopped / "resume_epoch.pt").is_file() and not (stopped / "resume.pt").exists()
    assert run_cli.main(["--resume", str(stopped), "--no-progress"]) == 0
    assert "in stage 1 (seg) after epoch 1/2" in capsys.readouterr().out
    assert _metrics(stopped)["matrix"][0] == pytest.approx(_metrics(full)["matrix"][0], abs=1e-6)
    sa, sb = _state(full / "model.pt"), _state(stopped / "model.pt")
    assert max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].numel()) <= 1e-6


def test_resume_needs_a_run_folder_with_state(runs, run_cli, tmp_path, capsys):
    nothing = tmp_path / "empty"
    nothing.mkdir()
    with pytest.raises(SystemExit) as e:
        run_cli.main(["--resume", str(nothing), "--no-progress"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "config.json" in err[0]

    no_state = tmp_path / "no-state"
    no_state.mkdir()
    shutil.copy(runs.a / "config.json", no_state / "config.json")
    with pytest.raises(SystemExit) as e:
        run_cli.main(["--resume", str(no_state), "--no-progress"])
    assert e.value.code != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "nothing to resume" in err[0]
    assert not (no_state / "metrics.json").exists()


def test_smoke_run_smaller_than_a_batch_still_trains(synthetic_root, run_cli, tmp_path):
    """4 images and the default batch of 8: one partial batch, not zero iterations."""
    out = tmp_path / "tiny"
    assert run_cli.main(["--strategy", "naive", "--tasks", "seg", "--image-size", "64", "--epochs", "1",
                         "--max-images", "4", "--workers", "0", "--no-pretrained", "--no-progress",
                         "--device", "cpu", "--data-root", str(synthetic_root), "--out", str(out)]) == 0
    losses = [float(v) for v in re.findall(r"Loss_Epoch/train_phase/train_stream/Task000 = ([0-9.eE+-]+)",
                                           (out / "log.txt").read_text())]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses)
    assert (out / "stage1_seg.pt").is_file() and _metrics(out)["tasks"] == ["seg"]


# ---------------------------------------------------------------------------------------------
# compare.py
# ---------------------------------------------------------------------------------------------

def test_compare_collects_runs_into_a_table_and_plot(runs, compare_cli, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert compare_cli.main(["--runs", str(runs.a), str(runs.b), "--out", str(out)]) == 0
    md = (out / "comparison.md").read_text()
    lines = md.splitlines()
    header = lines[0]
    for word in ("strategy", "seg mIoU", "det mAP", "cls Top-1", "BWT"):
        assert word in header, header
    rows = [ln for ln in lines if ln.startswith("| `")]
    assert len(rows) == 2
    for row, folder in zip(rows, (runs.a, runs.b)):
        m = _metrics(folder)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0].startswith(f"`{STRATEGY}")  # plus the remedy options, if any
        assert len(cells) == len(header.strip("|").split("|"))
        for j, t in enumerate(ORDER):
            assert cells[1 + j] == f"{m['final'][t]:.3f} ({m['drop_pct'][t]:+.1f})"
        assert cells[-1] == "n/a"  # no naive run to compare the time with
    assert "Baselines (diagonal)" in md
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    collected = json.loads((out / "comparison.json").read_text())
    assert [r["folder"] for r in collected] == [str(runs.a), str(runs.b)]
    assert "comparison.md" in capsys.readouterr().out


def test_compare_rejects_a_folder_without_metrics(runs, compare_cli, tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        compare_cli.main(["--runs", str(runs.a), str(empty), "--out", str(tmp_path / "cmp")])
    assert e.value.code != 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and str(empty) in err[0] and "metrics.json" in err[0]
    assert not (tmp_path / "cmp" / "comparison.md").exists()


def test_compare_rejects_runs_with_different_task_orders(runs, compare_cli, tmp_path, capsys):
    other = tmp_path / "other-order"
    other.mkdir()
    m = _metrics(runs.a)
    m["tasks"] = ["det", "seg", "cls"]
    (other / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(SystemExit) as e:
        compare_cli.main(["--runs", str(runs.a), str(other), "--out", str(tmp_path / "cmp")])
    assert e.value.code != 0
    assert "task order" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# fork_run.py: another remedy from the same stage 1
# ---------------------------------------------------------------------------------------------

def test_fork_from_stage_one_equals_a_run_from_scratch(runs, run_cli, tmp_path, synthetic_root):
    fork_cli = commands.fork
    scratch, forked = tmp_path / "scratch", tmp_path / "forked"
    args = [a if a != STRATEGY else "replay+lwf" for a in RUN_ARGS]
    assert run_cli.main([*args, "--data-root", str(synthetic_root), "--out", str(scratch)]) == 0
    assert fork_cli.main([str(runs.a), str(forked), "--strategy", "lwf+replay", "--no-progress"]) == 0
    ms, mf = _metrics(scratch), _metrics(forked)
    assert mf["strategy"] == ms["strategy"] == "replay+lwf"
    for rs, rf in zip(ms["matrix"], mf["matrix"], strict=True):
        assert rf == pytest.approx(rs, abs=1e-6)
    ss, sf = _state(scratch / "model.pt"), _state(forked / "model.pt")
    assert max(float((ss[k].double() - sf[k].double()).abs().max()) for k in ss if ss[k].numel()) <= 1e-6
    assert json.loads((forked / "forked_from.json").read_text())["source"] == str(runs.a)


def test_fork_refuses_what_it_cannot_reproduce(runs, tmp_path, capsys):
    fork_cli = commands.fork
    naive = tmp_path / "naive-src"
    naive.mkdir()
    for f in ("config.json", "stage1_seg.pt", "resume_stage1.pt"):
        shutil.copy(runs.a / f, naive / f)
    state = torch.load(naive / "resume_stage1.pt", weights_only=True)
    state["remedies"] = {}  # what a naive run keeps: no Fisher information
    torch.save(state, naive / "resume_stage1.pt")
    cases = [([str(naive), str(tmp_path / "x"), "--strategy", "ewc"], "Fisher"),
             ([str(tmp_path / "nothing"), str(tmp_path / "y"), "--strategy", "replay"], "not a run folder"),
             ([str(runs.a), str(runs.b), "--strategy", "replay"], "not empty")]
    for argv, why in cases:
        with pytest.raises(SystemExit) as e:
            fork_cli.main([*argv, "--no-progress"])
        assert e.value.code != 0
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error:") and why in err[0], err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fork_takes_remedy_options_and_waits_with_no_train(runs, tmp_path):
    fork_cli = commands.fork
    dest = tmp_path / "ewc-strong"
    assert fork_cli.main([str(runs.a), str(dest), "--strategy", "ewc", "--ewc-lambda", "5e4", "--no-train"]) == 0
    cfg = json.loads((dest / "config.json").read_text())
    assert cfg["strategy"] == "ewc" and cfg["remedy"]["ewc_lambda"] == 5e4 and cfg["out"] == str(dest)
    state = torch.load(dest / "resume.pt", map_location="cpu", weights_only=True)
    assert state["progress"]["done"] == 1 and not (dest / "metrics.json").exists()


def test_fork_after_stage_two_with_a_longer_last_stage_equals_a_run_from_scratch(runs, run_cli, tmp_path,
                                                                                   synthetic_root):
    fork_cli = commands.fork
    scratch = tmp_path / "scratch"
    args = [a if a != EPOCHS else "seg=1,det=2,cls=2" for a in RUN_ARGS]
    assert run_cli.main([*args, "--data-root", str(synthetic_root), "--out", str(scratch)]) == 0
    # a source without the stage-2 state file (a run from before they were kept): derived from its final state
    old = tmp_path / "old-source"
    shutil.copytree(runs.a, old)
    (old / "resume_stage2.pt").unlink()
    ms, ss = _metrics(scratch), _state(scratch / "model.pt")
    for source, how in ((runs.a, "saved"), (old, "derived")):
        forked = tmp_path / f"forked-{how}"
        assert fork_cli.main([str(source), str(forked), "--after-stage", "2", "--epochs", "cls=2",
                              "--no-progress"]) == 0
        mf = _metrics(forked)
        assert mf["epochs"] == {"seg": 1, "det": 2, "cls": 2} and mf["strategy"] == STRATEGY
        for rs, rf in zip(ms["matrix"], mf["matrix"], strict=True):
            assert rf == pytest.approx(rs, abs=1e-6)
        sf = _state(forked / "model.pt")
        assert max(float((ss[k].double() - sf[k].double()).abs().max()) for k in ss if ss[k].numel()) <= 1e-6
        info = json.loads((forked / "forked_from.json").read_text())
        assert info["stage"] == 2 and info["state"].startswith(how)


def test_a_later_fork_keeps_what_was_trained(runs, tmp_path, refused):
    fork_cli = commands.fork
    cases = [(["--after-stage", "2", "--strategy", "replay"], "must keep those remedies"),
             (["--after-stage", "2", "--epochs", "det=3"], "already trained"),
             (["--after-stage", "2", "--plan", "det.views=3"], "already trained"),
             (["--after-stage", "2", "--plan", "cls.view=3"], "unknown stage plan setting(s) view"),
             (["--after-stage", "2", "--plan", "cls.views=0"], "'views' must be at least 1"),
             (["--after-stage", "2", "--plan", "cls.remedies=\"lwf\""], "must be a list"),
             (["--after-stage", "2", "--plan", "cls.views=six"], "not a JSON value"),
             (["--after-stage", "2", "--plan", "cls=3"], "TASK.SETTING=VALUE"),
             (["--after-stage", "2", "--plan", "depth.views=2"], "not a stage"),
             (["--after-stage", "2", "--plan", "cls.views=100"], "'plan.cls.views'"),
             (["--after-stage", "2", "--plan", "cls.lr=\"fast\""], "'plan.cls.lr'"),
             (["--after-stage", "2", "--plan", "cls.remedies=gpm"], "not in the run's strategy"),
             (["--after-stage", "2", "--task-setting", "det.balance_boxes=true"], "already trained"),
             (["--task-setting", "det.nms_iou=0.5"], "not a training setting of det"),
             (["--task-setting", "cls.label_smoothing=0.1"], "not a training setting of cls"),
             (["--task-setting", "det.balance_boxes=\"yes\""], "balance_boxes"),
             (["--task-setting", "det.focal_gamma=-1"], "focal_gamma"),
             (["--task-setting", "det.box_loss_weight=-2"], "box_loss_weight"),
             (["--task-setting", "depth.focal_gamma=1"], "not a stage"),
             (["--after-stage", "3"], "--after-stage must be 1..2"),
             (["--epochs", "cls=two"], "task=N"),
             (["--epochs", "depth=2"], "not a stage")]
    for extra, why in cases:
        err = refused(fork_cli.main, [str(runs.a), str(tmp_path / "x"), *extra, "--no-progress"])
        assert err.startswith("error:") and why in err, (extra, err)
    assert not (tmp_path / "x").exists()


def test_fork_after_stage_two_may_hold_detection_harder_and_equals_a_run_from_scratch(runs, run_cli, tmp_path,
                                                                                      synthetic_root):
    """Detection is first distilled in stage 3, so its LwF weight may change in a fork after stage 2."""
    fork_cli = commands.fork
    scratch, forked = tmp_path / "scratch", tmp_path / "forked"
    assert run_cli.main([*RUN_ARGS, "--lwf-task-weights", "det=5", "--data-root", str(synthetic_root),
                         "--out", str(scratch)]) == 0
    assert fork_cli.main([str(runs.a), str(forked), "--after-stage", "2", "--lwf-task-weights", "det=5",
                          "--no-progress"]) == 0
    ms, mf = _metrics(scratch), _metrics(forked)
    assert json.loads((forked / "config.json").read_text())["remedy"]["lwf_task_weights"] == {"det": 5.0}
    for rs, ra in zip(ms["matrix"][:2], _metrics(runs.a)["matrix"][:2], strict=True):  # stages 1-2 as before
        assert rs == pytest.approx(ra, abs=1e-6)
    for rs, rf in zip(ms["matrix"], mf["matrix"], strict=True):
        assert rf == pytest.approx(rs, abs=1e-6)
    ss, sf = _state(scratch / "model.pt"), _state(forked / "model.pt")
    assert max(float((ss[k].double() - sf[k].double()).abs().max()) for k in ss if ss[k].numel()) <= 1e-6


def test_a_fork_with_balanced_detection_boxes_equals_a_run_from_scratch(runs, run_cli, tmp_path, synthetic_root):
    """Detection trains in stage 2, so a fork after stage 1 may change its training settings."""
    fork_cli = commands.fork
    recipe = json.loads((REPO / "experiments" / "configs" / "finetune-ewc-lwf.json").read_text())
    recipe.setdefault("model", {})["detection"] = {"balance_boxes": True}
    config = tmp_path / "balanced.json"
    config.write_text(json.dumps(recipe))
    scratch, forked = tmp_path / "scratch", tmp_path / "forked"
    args = [a if a != RUN_ARGS[1] else str(config) for a in RUN_ARGS]
    assert run_cli.main([*args, "--data-root", str(synthetic_root), "--out", str(scratch)]) == 0
    assert fork_cli.main([str(runs.a), str(forked), "--task-setting", "det.balance_boxes=true", "--no-progress"]) == 0
    assert json.loads((forked / "config.json").read_text())["model"]["detection"] == {"balance_boxes": True}
    ms, mf = _metrics(scratch), _metrics(forked)
    for rs, rf in zip(ms["matrix"], mf["matrix"], strict=True):
        assert rf == pytest.approx(rs, abs=1e-6)
    ss, sf, sa = _state(scratch / "model.pt"), _state(forked / "model.pt"), _state(runs.a / "model.pt")
    assert max(float((ss[k].double() - sa[k].double()).abs().max()) for k in ss if ss[k].numel()) > 1e-4  # it mattered
    assert max(float((ss[k].double() - sf[k].double()).abs().max()) for k in ss if ss[k].numel()) <= 1e-6


def test_a_fork_after_stage_two_refuses_another_weight_for_a_task_distilled_before(runs, tmp_path, capsys):
    fork_cli = commands.fork
    with pytest.raises(SystemExit):
        fork_cli.main([str(runs.a), str(tmp_path / "x"), "--after-stage", "2", "--lwf-task-weights", "seg=3",
                       "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "must keep those remedies" in err[0], err
    assert not (tmp_path / "x").exists()


def test_a_fork_after_stage_two_with_another_last_stage_plan_equals_a_run_from_scratch(runs, run_cli, tmp_path,
                                                                                       synthetic_root):
    """``--plan`` edits a later stage's plan: here only LwF acts in the cls stage."""
    fork_cli = commands.fork
    recipe = json.loads((REPO / "experiments" / "configs" / "finetune-ewc-lwf.json").read_text())
    recipe.setdefault("plan", {})["cls"] = {**recipe.get("plan", {}).get("cls", {}), "remedies": ["lwf"]}
    config = tmp_path / "cls-lwf.json"
    config.write_text(json.dumps(recipe))
    scratch, forked = tmp_path / "scratch", tmp_path / "forked"
    args = [a if a != RUN_ARGS[1] else str(config) for a in RUN_ARGS]
    assert run_cli.main([*args, "--data-root", str(synthetic_root), "--out", str(scratch)]) == 0
    assert fork_cli.main([str(runs.a), str(forked), "--after-stage", "2", "--plan", "cls.remedies=lwf",
                          "--no-progress"]) == 0
    assert json.loads((forked / "config.json").read_text())["plan"]["cls"]["remedies"] == ["lwf"]
    ms, mf = _metrics(scratch), _metrics(forked)
    for rs, rf in zip(ms["matrix"], mf["matrix"], strict=True):
        assert rf == pytest.approx(rs, abs=1e-6)
    ss, sf = _state(scratch / "model.pt"), _state(forked / "model.pt")
    assert max(float((ss[k].double() - sf[k].double()).abs().max()) for k in ss if ss[k].numel()) <= 1e-6


def test_a_fork_after_stage_two_may_add_a_remedy_that_acts_only_later(tmp_path, synthetic_root, run_cli, capsys,
                                                                     open_default_recipe):
    """A source whose det stage ran EWC + LwF only: gradient projection, acting in the cls stage
    alone, can join after stage 2 (its bases are made from the checkpoints) and the fork equals
    that recipe run from scratch; the options of a remedy that acted in the det stage cannot change."""
    fork_cli = commands.fork
    default, plans = open_default_recipe, open_default_recipe["plan"]
    source_recipe = {**default, "strategy": "ewc+lwf", "plan": {**plans, "det": {**plans["det"], "remedies": ["ewc", "lwf"]}}}
    target_recipe = {**source_recipe, "strategy": "ewc+lwf+gpm",
                     "plan": {**source_recipe["plan"], "cls": {**plans["cls"], "remedies": ["gpm"]}}}
    tiny = ["--data-root", str(synthetic_root), "--max-images", "6", "--image-size", "64", "--epochs", "1",
            "--workers", "0", "--no-progress", "--device", "cpu", "--no-pretrained"]
    configs = {}
    for name, recipe in (("source", source_recipe), ("target", target_recipe)):
        configs[name] = tmp_path / f"{name}.json"
        configs[name].write_text(json.dumps(recipe))
    source, scratch, forked = tmp_path / "source", tmp_path / "scratch", tmp_path / "forked"
    assert run_cli.main(tiny + ["--config", str(configs["source"]), "--out", str(source)]) == 0
    assert run_cli.main(tiny + ["--config", str(configs["target"]), "--gpm-positions", "16", "--out", str(scratch)]) == 0
    assert fork_cli.main([str(source), str(forked), "--after-stage", "2", "--strategy", "ewc+lwf+gpm",
                          "--gpm-positions", "16", "--plan", "cls.remedies=gpm", "--no-progress"]) == 0
    ms, mf = _metrics(scratch), _metrics(forked)
    assert mf["strategy"] == "ewc+lwf+gpm" and mf["matrix"] == ms["matrix"]
    ss, sf = _state(scratch / "model.pt"), _state(forked / "model.pt")
    assert all(torch.equal(ss[k], sf[k]) for k in ss)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # EWC acted in the det stage: its weight is part of what was trained
        fork_cli.main([str(source), str(tmp_path / "x"), "--after-stage", "2", "--strategy", "ewc+lwf+gpm",
                       "--ewc-lambda", "5", "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert e.value.code == 2 and len(err) == 1 and "det: ewc+lwf" in err[0] and "must keep" in err[0], err
    assert not (tmp_path / "x").exists()
