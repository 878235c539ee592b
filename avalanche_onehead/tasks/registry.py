"""What a task is (:class:`TaskSpec`) and the table of registered tasks (:data:`TASKS`).

Each task module (``seg.py``, ``det.py``, ``cls.py``) defines everything that differs per
task (target type, collate, loss, decoding, evaluator, distillation term, drawing, its part of
the predict command's output (:class:`PredictionOutput`), quality bar, reader and synthetic
writer) and registers its spec here, next to that definition.
The model, criterion, metrics, readers, remedies and command lines loop over :data:`TASKS`
instead of branching on task names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor


class Target:
    """Base of every per-sample target: its task's name, and what the shared machinery asks
    of it.  Avalanche moves each batch element with ``.to(device)``; the frozen-feature cache
    keeps ``compact()`` copies (``expanded()`` gives back what training reads, ``nbytes()``
    what the stored copy takes).  The defaults suit targets without tensors."""

    task: ClassVar[str] = ""

    def to(self, device: torch.device | str, **kwargs: Any) -> "Target":
        return self

    def compact(self) -> "Target":
        return self

    def expanded(self) -> "Target":
        return self

    def nbytes(self) -> int:
        return 0


@dataclass(frozen=True)
class PredictionContext:
    """What a task's :class:`PredictionOutput` hooks get besides the prediction: its class
    names and keys from the checkpoint, the name of its own file, the command's drawing limits."""

    names: list[str]  # its class names (placeholders when the checkpoint has none)
    class_keys: list[str]  # its dataset class keys from the checkpoint (detection's: COCO category ids)
    file: str | None  # the file name of its own output (``PredictionOutput.suffix``), if it has one
    min_score: float  # scored predictions are drawn from this score on (``--min-score``)
    max_boxes: int  # and at most this many of them (``--max-boxes``)


@dataclass(frozen=True)
class PredictionOutput:
    """A task's part of what the predict command (``avalanche_onehead/predict.py``) writes for
    one image, so that the command loops over tasks instead of knowing them.

    ``record`` turns the decoded prediction into the task's section ``key`` of NAME.json;
    ``write`` (with ``suffix``) writes its own file NAME<suffix>; ``panel`` draws its panel of
    NAME.png (over the image, which is drawn already), ``caption`` gives a line of the picture's
    title instead; ``summary`` is its part of the command's one line per image.  All but
    ``record`` are optional.  (``TaskSpec.draw`` draws a prediction next to its ground truth, for
    the run's figures; these draw a prediction alone, under the command's limits.)"""

    key: str  # its section's key in NAME.json
    record: Callable[[Any, PredictionContext], Any]  # (prediction, context) -> JSON-ready section
    position: int = 100  # sections sit in NAME.json by this, then by task label (built-ins: 1, 2, 3)
    suffix: str | None = None  # its own file is NAME + suffix, written by ``write``
    write: Callable[[Any, Path], None] | None = None  # (prediction, path)
    panel: Callable[[Any, Any, Any, PredictionContext], None] | None = None  # (ax, prediction, section, context)
    caption: Callable[[Any], str] | None = None  # (section) -> a line of the picture's title
    summary: Callable[[Any], str] | None = None  # (section) -> its words in the command's line


@dataclass(frozen=True)
class TaskSpec:
    """One task.  ``loss``, ``decode`` and ``make_evaluator`` take the task's own settings as
    keyword arguments (``settings(model_config, head_stride)`` makes them from a model config;
    tasks without settings take none)."""

    name: str
    label: int  # Avalanche task label, fixed whatever the training order
    title: str
    metric_name: str  # headline key of the evaluator's ``compute()``
    folder: str  # default dataset folder under a data root
    num_classes: int
    target: type[Target]  # the per-sample target its reader yields
    collate: Callable[[list[Any]], Any]  # that task's targets of one batch -> one object with ``.to``
    loss: Callable[..., dict[str, Tensor]]  # (raw outputs of its samples, collated target) -> components
    decode: Callable[..., Any]  # (one image's raw output, original (h, w)) -> prediction
    make_evaluator: Callable[..., Any]  # (num_classes) -> object with update(raw, target), compute(), reset()
    reader: str  # "module:Class" of its dataset reader; the benchmarks package resolves it
    extra_channels: int = 0  # output channels beyond one per class
    # (its map, the model's spatial pooling :func:`spatial_pool`) -> an image-level output
    reduce: Callable[[Tensor, Callable[[Tensor], Tensor]], Tensor] | None = None
    subsample: Callable[[Any, int], Any] | None = None  # collated dense target -> every k-th pixel
    settings: Callable[[Any, int | None], dict[str, Any]] | None = None
    settings_field: str | None = None  # the model config's field that ``settings`` reads (a dict)
    # those of its settings only training reads (the others also decode: every evaluation uses them)
    training_settings: tuple[str, ...] = ()
    distill: Callable[[Tensor, Tensor, Any], Tensor] | None = None  # (student, teacher, LwF options)
    init_output_bias: Callable[[Tensor, int], None] | None = None  # (its output bias, num_classes)
    draw: Callable[..., None] | None = None  # one panel of a prediction figure
    panels: int = 1  # panels per image in a prediction figure
    predict_output: PredictionOutput | None = None  # its part of the predict command's files
    secondary_metrics: tuple[str, ...] = ()  # evaluator keys kept per stage beside the headline
    quality_bar: float | None = None  # the project's aim for the headline metric after the sequence
    synthetic_writer: str | None = None  # "module:function" writing its part of the synthetic benchmark

    def out_channels(self, num_classes: int | None = None) -> int:
        return (num_classes or self.num_classes) + self.extra_channels


#: how the model pools a map into one image-level vector (``ModelConfig.pool``)
POOLS = ("mean", "lse")


def check_pool(kind: str) -> None:
    """A pooling name outside :data:`POOLS` is a ValueError."""
    if kind not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {kind!r}")


def spatial_pool(x: Tensor, kind: str = "mean", sharpness: float = 1.0) -> Tensor:
    """(B, C, h, w) -> (B, C).  ``"mean"``: the spatial average.  ``"lse"``: the log-sum-exp
    smooth maximum ``log(mean_p exp(r x_p)) / r`` with sharpness ``r``, between the average
    (r -> 0) and the maximum (r -> inf): a class scores where it is seen instead of being
    averaged with the background, so a per-place linear read-out is not limited to what the
    pooled features hold."""
    check_pool(kind)
    if kind == "mean":
        return x.mean(dim=(2, 3))
    flat = x.flatten(2) * sharpness
    return (torch.logsumexp(flat, dim=-1) - math.log(flat.shape[-1])) / sharpness


#: every registered task, in label order
TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to :data:`TASKS` (kept in label order, so the import order of the task
    modules does not matter); a name or label taken already is an error."""
    for other in TASKS.values():
        if spec.name == other.name or spec.label == other.label:
            raise ValueError(f"task {spec.name!r} (label {spec.label}) clashes with registered task "
                             f"{other.name!r} (label {other.label})")
    ordered = sorted([*TASKS.values(), spec], key=lambda s: s.label)
    TASKS.clear()
    TASKS.update((s.name, s) for s in ordered)
    return spec


def decode_batch(out, image_hw: Sequence[int], n: int, original_sizes, settings: dict[str, dict[str, Any]],
                 tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Raw outputs of ``n`` images -> per image ``{task: prediction}`` in ORIGINAL pixels
    (``original_sizes`` (h, w) per image; the network-input size when not given).
    ``settings`` holds each task's own settings (``OneHeadNet.task_settings``)."""
    sizes = original_sizes or [tuple(image_hw)] * n
    return [{t: TASKS[t].decode(out[t][i], tuple(sizes[i]), **settings.get(t, {})) for t in tasks}
            for i in range(n)]


def task_of_label(label: int) -> str:
    """Task name of an Avalanche task label."""
    for name, spec in TASKS.items():
        if spec.label == label:
            return name
    raise KeyError(f"no task has label {label}")


def parse_tasks(text: str | Sequence[str]) -> list[str]:
    """``"seg,det"`` -> ``["seg", "det"]``; ``"all"`` -> every registered task, by label."""
    names = list(TASKS) if text == "all" else (
        [t.strip() for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    )
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or text!r}; known: {', '.join(TASKS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"task listed twice in {text!r}")
    return list(names)
