"""A fourth task, defined in this one module and registered by one line: proof that a task
lives in one place.

The toy task regresses the mean brightness (grey level in 0..1) of the synthetic
classification images through one output channel.  Its target type, collate, reader, loss,
decoding, evaluator, distillation term and part of the predict command's output are all
below; ``register(BRIGHTNESS)`` in the fixture is the only line that tells the project about
it.  Then the model grows its output channel group, the criterion its loss, the metrics its
evaluator, the Avalanche stream its experience, LwF its distillation term, a run folder its
column of metrics.json, and the predict command its section of the JSON.  The fixture takes
the registration back, so no other test sees a fourth task.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.regression import MeanAbsoluteError

from avalanche_onehead.tasks import TASKS, PredictionOutput, Target, TaskSpec, register
from benchmarks.readers import FolderClassification

SIZE = 32


# ------------------------------------------------------------------ the fourth task, whole

@dataclass
class BrightTarget(Target):
    """Mean grey level of the image on disk, 0..1."""

    value: float
    task = "bright"


def stack_values(targets: list[BrightTarget]) -> Tensor:
    return torch.tensor([[t.value] for t in targets])


def pool(raw: Tensor, model_pool) -> Tensor:
    return raw.mean(dim=(2, 3))  # a brightness is an average whatever the model's pooling


def brightness_loss(raw: Tensor, values: Tensor) -> dict[str, Tensor]:
    return {"mse": F.mse_loss(raw, values)}


def decode_brightness(raw: Tensor, orig_size: tuple[int, int]) -> Tensor:
    return raw.clamp(0, 1)


class BrightnessEvaluator:
    """1 - mean absolute error of the clamped prediction (a fraction, higher is better)."""

    def __init__(self, num_classes: int):
        self.mae = MeanAbsoluteError()
        self.seen = 0

    def reset(self) -> None:
        self.mae.reset()
        self.seen = 0

    def update(self, raw: Tensor, target: Tensor) -> None:
        self.mae.update(raw.detach().cpu().clamp(0, 1), target.cpu())
        self.seen += len(target)

    def compute(self) -> dict[str, float]:
        return {"1-MAE": 1.0 - float(self.mae.compute()) if self.seen else 0.0}


class BrightnessReader(FolderClassification):
    """Every image of the classification folders, with its mean grey level as the target."""

    def __init__(self, task_dir, split, transform=None):
        super().__init__(task_dir, split, transform)
        self.classes = ["brightness"]

    @property
    def class_keys(self) -> list[str]:
        return ["brightness"]

    def load(self, i: int):
        image, _ = super().load(i)
        return image, {"brightness": float(np.asarray(image.convert("L")).mean() / 255)}

    def make_target(self, raw) -> BrightTarget:
        return BrightTarget(raw["brightness"])


#: its part of the predict command's output: a JSON section and a word in the command's line
#: (no file of its own, no panel of the picture)
PREDICT_OUTPUT = PredictionOutput(key="brightness", record=lambda value, ctx: {"value": round(float(value), 4)},
                                  summary=lambda section: f"brightness {section['value']:.2f}")

BRIGHTNESS = TaskSpec(
    name="bright", label=3, title="mean brightness regression", metric_name="1-MAE", folder="imagenette_160",
    num_classes=1, target=BrightTarget, collate=stack_values, loss=brightness_loss, decode=decode_brightness,
    make_evaluator=BrightnessEvaluator, reader=f"{__name__}:BrightnessReader", reduce=pool,
    distill=lambda student, teacher, lwf: F.mse_loss(student, teacher), predict_output=PREDICT_OUTPUT,
)


# ------------------------------------------------------------------ the project, unchanged

@pytest.fixture()
def bright():
    before = list(TASKS)
    register(BRIGHTNESS)  # the one registry line
    yield BRIGHTNESS
    TASKS.pop(BRIGHTNESS.name)
    assert list(TASKS) == before


def test_the_fourth_task_is_registered_only_inside_its_fixture():
    assert list(TASKS) == ["seg", "det", "cls"]


def test_registering_a_taken_name_or_label_is_an_error(bright):
    from dataclasses import replace

    for clash in (replace(BRIGHTNESS, label=7), replace(BRIGHTNESS, name="other", label=0)):
        with pytest.raises(ValueError, match="clashes"):
            register(clash)


def test_model_grows_its_output_channel_group(bright):
    from avalanche_onehead.model import create_model

    model = create_model(pretrained=False).eval()
    slices = model.output_slices()
    assert list(slices) == ["seg", "det", "cls", "bright"]
    assert slices["bright"] == slice(46, 47) and model.head[-1].out_channels == 47  # still ONE output layer
    assert model.cfg.num_classes["bright"] == 1
    with torch.no_grad():
        out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out["bright"].shape == (2, 1) and out["cls"].shape == (2, 10) and out["seg"].shape[1] == 21
    pred = model.predict(torch.randn(1, 3, SIZE, SIZE), tasks=["bright"])[0]
    assert set(pred) == {"bright"} and 0 <= float(pred["bright"]) <= 1


def test_criterion_and_metric_take_its_samples_in_mixed_batches(bright):
    from avalanche_onehead.evaluation import TaskMetric
    from avalanche_onehead.losses import OneHeadCriterion
    from avalanche_onehead.model import create_model
    from avalanche_onehead.targets import collate_onehead
    from avalanche_onehead.tasks.cls import ClsTarget

    model = create_model(pretrained=False).train()
    images = torch.randn(3, 3, SIZE, SIZE)
    x, y = collate_onehead([(images[0], BrightTarget(0.2)), (images[1], ClsTarget(4)), (images[2], BrightTarget(0.9))])
    assert y["bright"].index.tolist() == [0, 2] and y["bright"].target.shape == (2, 1)
    criterion = OneHeadCriterion(model.task_settings)
    loss = criterion(model(x), y)
    assert set(criterion.last) == {"bright/mse", "cls/ce"} and criterion.last["bright/mse"] > 0
    loss.backward()
    grad = model.head[-1].weight.grad
    assert grad[model.output_slices()["bright"]].abs().sum() > 0 and grad[model.output_slices()["det"]].abs().sum() == 0

    metric = TaskMetric("bright")
    assert str(metric) == "1-MAE" and isinstance(metric.evaluator, BrightnessEvaluator)
    metric.evaluator.update(torch.tensor([[0.2], [0.4]]), torch.tensor([[0.2], [0.9]]))
    assert metric.evaluator.compute()["1-MAE"] == pytest.approx(0.75)


def test_lwf_distils_it_by_its_own_term(bright):
    import copy

    from avalanche_onehead.model import create_model
    from strategies.remedies import LwFDistillation, PreviousModel

    torch.manual_seed(0)
    student = create_model(pretrained=False).train()
    teacher = PreviousModel()
    teacher.teacher, teacher.trained = copy.deepcopy(student).eval().requires_grad_(False), ["bright"]
    with torch.no_grad():
        student.head[-1].bias.add_(0.5)
    x = torch.randn(2, 3, SIZE, SIZE)
    strategy = SimpleNamespace(mb_x=x, mb_output=student(x), clock=SimpleNamespace(train_iterations=1),
                               experience=SimpleNamespace(task_labels=[TASKS["cls"].label]))
    penalty = LwFDistillation(teacher).penalty(strategy)
    assert float(penalty.detach()) == pytest.approx(0.25, rel=1e-4)  # the MSE of the 0.5 shift of its one channel


def test_the_stream_has_an_experience_of_it(bright, synthetic_root):
    from benchmarks import build_stream
    from benchmarks.stream import describe_stream

    stream = build_stream(synthetic_root, order=["cls", "bright"], image_size=SIZE, max_images=4)
    train, test = stream.benchmark.train_stream[1], stream.benchmark.test_stream[1]
    assert list(train.task_labels) == [3] and list(test.task_labels) == [3]
    image, target, label = test.dataset[0]
    assert image.shape == (3, SIZE, SIZE) and isinstance(target, BrightTarget) and label == 3
    assert 0 < target.value < 1
    assert "bright (mean brightness regression, task label 3)" in describe_stream(stream)


def test_a_run_folder_carries_its_metrics(bright, synthetic_root, tmp_path):
    from avalanche_onehead.checkpoint import load_checkpoint
    from avalanche_onehead.training import RunConfig, run

    out = tmp_path / "run"
    run(RunConfig(strategy="lwf", data_root=str(synthetic_root), order=["bright", "cls"],
                  epochs={"bright": 1, "cls": 1}, image_size=SIZE, pretrained=False, max_images=4, batch_size=4,
                  eval_batch_size=4, workers=0, out=str(out), progress=False), log=lambda *a: None)
    m = json.loads((out / "metrics.json").read_text())
    assert m["tasks"] == ["bright", "cls"] and m["metric_names"] == {"bright": "1-MAE", "cls": "Top-1"}
    assert len(m["matrix"]) == 2 and all(type(v) is float and 0 <= v <= 1 for row in m["matrix"] for v in row)
    assert m["matrix"][0][0] > 0  # a regression scored after its own stage
    assert m["baseline"]["bright"] == m["matrix"][0][0] and m["final"]["bright"] == m["matrix"][1][0]
    model, meta = load_checkpoint(out / "stage1_bright.pt")
    assert meta["classes"]["bright"] == ["brightness"] and model.output_slices()["bright"] == slice(46, 47)


def test_the_predict_command_writes_its_section(bright, tmp_path):
    from PIL import Image

    from avalanche_onehead.checkpoint import save_checkpoint
    from avalanche_onehead.model import create_model
    from avalanche_onehead.predict import predict_files, summary_line

    model = create_model(pretrained=False)
    weights = save_checkpoint(tmp_path / "four.pt", model, classes={"bright": ["brightness"]}, image_size=SIZE)
    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 50, 3), 128, dtype=np.uint8)).save(photo)
    (record,) = predict_files(weights, [photo], tmp_path / "preds")
    written = json.loads((tmp_path / "preds" / "grey.json").read_text())
    assert list(written)[-4:] == ["detections", "classification", "segmentation", "brightness"]  # after the built-ins
    assert 0 <= record["brightness"]["value"] <= 1
    assert summary_line(record).endswith(f", brightness {record['brightness']['value']:.2f}")
    assert [p.rsplit("/", 1)[-1] for p in record["written"]] == ["grey.png", "grey.json", "grey_mask.png"]


def test_the_probe_refuses_it_for_its_targets_are_not_classes(bright, tmp_path, synthetic_root):
    """Its output is an image-level vector, but a logistic-regression probe needs a class per image."""
    from avalanche_onehead.checkpoint import save_checkpoint
    from avalanche_onehead.model import create_model
    from avalanche_onehead.probe import probe_checkpoint

    weights = save_checkpoint(tmp_path / "four.pt", create_model(pretrained=False), classes={}, image_size=SIZE)
    with pytest.raises(ValueError, match="task 'bright' .* no class index per image"):
        probe_checkpoint(weights, synthetic_root, max_images=4, task="bright")
