"""Image classification: one class index per image, logits as the model's spatial pooling
(``ModelConfig.pool``: the mean by default) of the classification channels, cross-entropy,
Top-1, temperature distillation, and its part of the predict command's output (the class
probabilities by name, the top 3 in the picture's title)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from .registry import PredictionContext, PredictionOutput, Target, TaskSpec, register


@dataclass
class ClsTarget(Target):
    """Class index of a whole image."""

    label: int
    task = "cls"


def stack_labels(targets: list[ClsTarget]) -> Tensor:
    return torch.tensor([t.label for t in targets], dtype=torch.long)


def pool_logits(raw: Tensor, pool: Callable[[Tensor], Tensor]) -> Tensor:
    """Classification logits are the model's spatial pooling of the classification channels."""
    return pool(raw)


def classification_loss(raw: Tensor, labels: Tensor) -> dict[str, Tensor]:
    return {"ce": F.cross_entropy(raw, labels)}


def class_probabilities(raw: Tensor, orig_size: tuple[int, int]) -> Tensor:
    return raw.softmax(-1)


class ClsEvaluator:
    """Top-1 accuracy over all samples (plus per-class accuracy)."""

    def __init__(self, num_classes: int):
        self.top1 = MulticlassAccuracy(num_classes, average="micro")
        self.per_class = MulticlassAccuracy(num_classes, average="none")

    def reset(self) -> None:
        self.top1.reset()
        self.per_class.reset()

    def update(self, raw: Tensor, target: Tensor) -> None:
        pred = raw.detach().cpu()
        self.top1.update(pred, target.cpu())
        self.per_class.update(pred, target.cpu())

    def compute(self) -> dict[str, float]:
        if int(self.top1.tp.sum() + self.top1.fn.sum()) == 0:
            return {"Top-1": 0.0}
        out = {"Top-1": float(self.top1.compute())}
        out.update({f"Acc/{i}": float(v) for i, v in enumerate(self.per_class.compute().tolist())})
        return out


def cls_distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) of temperature-softened logits."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def draw_label(ax, raw: dict[str, Any], pred: Tensor, names: list[str], panel: int) -> None:
    """The predicted class with its probability over the true one (green when right)."""
    p = pred.float().cpu()
    k = int(p.argmax())
    ok = k == int(raw["label"])
    ax.set_title(f"predicted {names[k]} ({float(p[k]):.2f})\ntrue {names[int(raw['label'])]}",
                 fontsize=8, color="green" if ok else "red")


def probabilities_record(probs: Tensor, ctx: PredictionContext) -> dict[str, Any]:
    """Its section of a prediction's JSON: the top 3 classes, and every class's probability,
    most probable first."""
    probs = probs.float().cpu()
    order = probs.argsort(descending=True).tolist()
    return {"top3": [{"label": ctx.names[i], "probability": round(float(probs[i]), 4)} for i in order[:3]],
            "probabilities": {ctx.names[i]: round(float(probs[i]), 4) for i in order}}


def top3_caption(section: dict[str, Any]) -> str:
    """The picture's title line: the three most probable classes."""
    return "classification, top 3: " + ", ".join(f"{t['label']} {t['probability']:.2f}" for t in section["top3"])


def top_class_summary(section: dict[str, Any]) -> str:
    """Its words in the command's line per image: the most probable class."""
    top = section["top3"][0]
    return f"top class {top['label']} ({top['probability']:.2f})"


PREDICT_OUTPUT = PredictionOutput(key="classification", record=probabilities_record, position=2,
                                  caption=top3_caption, summary=top_class_summary)

CLS = register(TaskSpec(
    name="cls", label=2, title="image classification", metric_name="Top-1", folder="imagenette_160",
    num_classes=10, target=ClsTarget, collate=stack_labels, loss=classification_loss, decode=class_probabilities,
    make_evaluator=ClsEvaluator, reader="benchmarks.readers:FolderClassification", reduce=pool_logits,
    distill=lambda student, teacher, lwf: cls_distillation(student, teacher, lwf.temperature),
    draw=draw_label, predict_output=PREDICT_OUTPUT, quality_bar=0.97, synthetic_writer="benchmarks.synthetic:write_cls",
))
