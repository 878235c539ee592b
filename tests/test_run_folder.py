"""RunFolder: each file of a run folder round-trips, and folders written before still read."""
from __future__ import annotations

import json

import pytest
import torch

from avalanche_onehead import run_folder as run_folder_module
from avalanche_onehead.errors import OneHeadError
from avalanche_onehead.model import create_model
from avalanche_onehead.plugins import rng_state
from avalanche_onehead.run_folder import RunFolder, empty_progress
from strategies import TEACHER, build_remedies

pytestmark = pytest.mark.usefixtures("one_thread")

META = {"classes": {"cls": [f"c{i}" for i in range(10)]}, "image_size": 64}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(pretrained=False)


@pytest.fixture
def folder(tmp_path) -> RunFolder:
    f = RunFolder(tmp_path / "run")
    f.create({"strategy": "ewc", "order": ["seg", "det"]})
    return f


def _progress(done: int) -> dict:
    return {"done": done, "matrix": [[0.1 * (i + 1), 0.2] for i in range(done)], "extras": [{}] * done,
            "stage_seconds": {t: 1.0 for t in ["seg", "det"][:done]},
            "last_epoch_loss": {t: 2.0 for t in ["seg", "det"][:done]}, "clock": {"train_iterations": 3 * done}}


def _epoch_state(stage: int, task: str) -> dict:
    return {"stage": stage, "task": task, "epochs_done": 1, "model": {"w": torch.ones(2)}, "optimizer": {},
            "parts": {}, "clock": {"train_iterations": 4}, "rng": rng_state(), "seconds": 1.5}


def test_the_file_names_are_the_documented_format(folder):
    names = {p.name for p in (folder.config_file, folder.log_file, folder.tensorboard_dir, folder.epoch_state_file,
                              folder.resume_file, folder.metrics_file, folder.metrics_detail_file,
                              folder.matrix_figure, folder.model_file, folder.forked_from_file,
                              folder.stage_checkpoint(2, "det"), folder.stage_state_file(3))}
    assert names == {"config.json", "log.txt", "tb", "resume_epoch.pt", "resume.pt", "metrics.json",
                     "metrics_detail.json", "matrix.png", "model.pt", "forked_from.json", "stage2_det.pt",
                     "resume_stage3.pt"}
    for name in names:  # the module's docstring lists every one of them
        assert name.replace("2_det", "<K>_<task>").replace("stage3", "stage<K>") in run_folder_module.__doc__
    for name in ("resume_stage1.pt", "resume_stage12.pt", "resume_stageX.pt", ".resume_stage2.pt.tmp"):
        (folder.path / name).write_bytes(b"")
    assert folder.stage_state_files() == {1: folder.stage_state_file(1), 12: folder.stage_state_file(12)}


def test_config_metrics_and_fork_record_round_trip(folder, tmp_path):
    assert folder.is_run_folder() and folder.read_config() == {"strategy": "ewc", "order": ["seg", "det"]}
    assert RunFolder(tmp_path / "nothing").read_config() == {}
    assert not folder.is_finished()
    with pytest.raises(OneHeadError, match=r"metrics\.json: missing"):
        folder.read_metrics()
    metrics, detail = {"matrix": [[0.5]], "last_epoch_loss": {"seg": 1.25}}, [{"mIoU/x": 0.5}]
    folder.write_metrics(metrics, detail)
    assert folder.is_finished() and folder.read_metrics() == metrics
    assert json.loads(folder.metrics_detail_file.read_text()) == detail
    assert folder.read_forked_from() is None
    folder.write_forked_from({"source": "runs/a", "stage": 1})
    assert folder.read_forked_from() == {"source": "runs/a", "stage": 1}
    folder.config_file.write_text("{broken")
    with pytest.raises(OneHeadError, match="config.json: not a readable JSON file"):
        folder.read_config()


def test_stage_checkpoints_and_the_final_model_round_trip(folder, model, monkeypatch):
    path = folder.save_stage_checkpoint(1, "seg", model, **META, provenance={"stage": 1})
    assert path == folder.stage_checkpoint(1, "seg")
    weights = folder.stage_weights(1, "seg")
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k].cpu()) for k, v in weights.items())
    folder.save_final_model(1, "seg", model, **META)
    assert folder.model_file.stat().st_ino == path.stat().st_ino  # one copy: a second name of stage 1's

    def no_links(*args):
        raise OSError("links not supported here")

    monkeypatch.setattr(run_folder_module.os, "link", no_links)
    folder.model_file.unlink()
    folder.save_final_model(1, "seg", model, **META)
    assert folder.model_file.stat().st_ino != path.stat().st_ino
    assert torch.load(folder.model_file, weights_only=True)["state_dict"].keys() == weights.keys()
    assert not [p for p in folder.path.iterdir() if p.name.startswith(".")]


def test_epoch_states_round_trip_and_a_failed_write_is_said_once_per_stage(folder, monkeypatch):
    state = _epoch_state(0, "seg")
    assert not folder.can_resume()
    assert folder.write_epoch_state(state) and folder.can_resume()
    back = folder.read_epoch_state(folder.epoch_state_file)
    assert back["task"] == "seg" and torch.equal(back["model"]["w"], state["model"]["w"])
    folder.clear_epoch_state()
    assert not folder.epoch_state_file.exists()

    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").write(b"\0")
        raise OSError(28, "No space left on device", str(f))

    said = []
    monkeypatch.setattr(torch, "save", full_disk)
    assert [folder.write_epoch_state(_epoch_state(s, "seg"), said.append) for s in (0, 0, 1)] == [False] * 3
    assert len(said) == 2 and all("No space left on device" in line for line in said)  # stages 0 and 1
    assert not [p for p in folder.path.iterdir() if p.name.endswith(".tmp")]


def test_stage_states_round_trip_and_the_latest_one_resumes(folder, model):
    folder.write_stage_state(_progress(1), {"ewc": {"fisher_rng": {}}})
    assert folder.stage_state_file(1).is_file() and folder.resume_file.is_file()
    folder.save_stage_checkpoint(1, "seg", model, **META)
    state = folder.load_resume_state(["seg", "det"])
    assert state["progress"] == _progress(1) and state["remedies"] == {"ewc": {"fisher_rng": {}}}
    assert state["epoch"] is None
    folder.write_epoch_state(_epoch_state(1, "det"))  # stage 2 after its first epoch
    assert folder.load_resume_state(["seg", "det"])["epoch"]["task"] == "det"
    # resume.pt could not be written after stage 2: its own state file is the latest
    torch.save({"progress": _progress(2), "remedies": {}}, folder.stage_state_file(2))
    folder.save_stage_checkpoint(2, "det", model, **META)
    state = folder.load_resume_state(["seg", "det"])
    assert state["progress"]["done"] == 2 and state["epoch"] is None  # the epoch state is of a finished stage
    assert folder.state_after(1)[0] == folder.stage_state_file(1)
    assert folder.state_after(3) is None
    folder.stage_checkpoint(2, "det").unlink()
    with pytest.raises(OneHeadError, match="stage2_det.pt: missing"):
        folder.load_resume_state(["seg", "det"])


def test_a_damaged_or_empty_state_is_one_clear_error(folder):
    folder.resume_file.write_bytes(b"PK\x03\x04 not a state")
    with pytest.raises(OneHeadError, match="resume.pt: not a readable resume state"):
        folder.load_resume_state()
    folder.resume_file.unlink()
    with pytest.raises(OneHeadError, match="nothing to resume"):
        folder.load_resume_state()
    torch.save({"progress": {**_progress(1), "last_epoch_loss": [1.0]}, "remedies": {}}, folder.resume_file)
    with pytest.raises(OneHeadError, match="'last_epoch_loss' record is damaged"):
        folder.load_resume_state()


def test_remedy_state_is_kept_by_registry_name_and_restored(folder):
    remedies = build_remedies("ewc+replay+lwf")
    ewc, teacher = remedies.stateful["ewc"], remedies.stateful[TEACHER]
    ewc.fisher_rng = {0: rng_state()}
    teacher.snapshot.trained = ["seg"]
    folder.write_stage_state(_progress(1), remedies.resume_state())
    saved = torch.load(folder.resume_file, weights_only=True)["remedies"]
    assert set(saved) == {"ewc", "replay", TEACHER}
    again = build_remedies("ewc+replay+lwf")
    again.restore(folder.read_state(folder.resume_file)["remedies"], strategy=None, finished=[])
    assert again.stateful[TEACHER].trained == ["seg"]
    assert torch.equal(again.stateful["ewc"].fisher_rng[0]["torch"], ewc.fisher_rng[0]["torch"])
    assert again.stateful["ewc"].needs_rebuild(0) and not again.stateful["ewc"].needs_rebuild(1)


def test_a_folder_that_keyed_remedy_state_by_class_name_still_resumes(folder):
    """Run folders written before the registry names kept each remedy's state under its plugin class."""
    fisher_rng, initial = {0: rng_state()}, {"w": torch.arange(3.0)}
    torch.save({"progress": _progress(1), "remedies": {"OneHeadEWC": {"fisher_rng": fisher_rng},
                                                       "PreviousModel": {"trained": ["seg"]},
                                                       "TaskBudgetReplay": {},
                                                       "PretrainedAnchor": {"initial": initial}}}, folder.resume_file)
    states = folder.read_state(folder.resume_file)["remedies"]
    assert set(states) == {"ewc", TEACHER, "replay", "anchor"}
    remedies = build_remedies("ewc+replay+lwf+anchor")
    remedies.restore(states, strategy=None, finished=[])
    assert remedies.stateful[TEACHER].trained == ["seg"]
    assert torch.equal(remedies.stateful["anchor"]._initial_state["w"], initial["w"])
    assert remedies.stateful["ewc"].needs_rebuild(0)  # its Fisher of stage 1 is computed again on resume
    assert torch.equal(remedies.stateful["ewc"].fisher_rng[0]["torch"], fisher_rng[0]["torch"])


def test_the_last_epoch_loss_is_read_from_the_metrics_or_an_old_folders_log(folder):
    assert folder.last_epoch_loss("det") is None
    folder.log_file.write_text("\tLoss_Epoch/train_phase/train_stream/Task001 = 5.1000\n"
                               "\tLoss_Epoch/train_phase/train_stream/Task001 = 4.7021\n"
                               "\tLoss_Epoch/train_phase/train_stream/Task002 = 7.7290\n")
    assert folder.last_epoch_loss("det") == 4.7021  # an old folder: its log's last line of that stage
    assert folder.last_epoch_loss("seg") is None
    folder.write_metrics({"last_epoch_loss": {"det": 4.702076792716980}}, [])
    assert folder.last_epoch_loss("det") == 4.702076792716980  # the value the run recorded, unrounded


def test_saved_state_and_resumability_say_what_a_folder_holds(folder):
    assert not folder.has_saved_state() and not folder.can_resume()
    folder.write_stage_state(_progress(1), {})
    folder.resume_file.unlink()
    assert folder.has_saved_state() and not folder.can_resume()  # a stage state only: forkable
    assert empty_progress() == {"done": 0, "matrix": [], "extras": [], "stage_seconds": {}, "last_epoch_loss": {}}
    assert empty_progress()["matrix"] is not empty_progress()["matrix"]
