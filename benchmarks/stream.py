"""Data roots and the Avalanche task-incremental stream (one experience per task)."""
from __future__ import annotations

import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.classification_dataset import TaskAwareClassificationDataset
from avalanche.benchmarks.utils.data_attribute import TaskLabels

from avalanche_onehead.targets import collate_onehead
from avalanche_onehead.tasks import DEFAULT_ORDER, TASKS

from .errors import DatasetError
from .readers import TaskDataset, find_task_dir
from .synthetic import synthetic_root
from .transforms import IMAGENET_MEAN, IMAGENET_STD, JointTransform


@dataclass
class DataRoot:
    path: Path
    synthetic: bool
    chosen_by_default: bool = False  # no root given and ./data absent

    def describe(self) -> str:
        if self.synthetic and self.chosen_by_default:
            return f"data: embedded synthetic benchmark at {self.path} (no data root given and ./data absent)"
        if self.synthetic:
            return f"data: synthetic benchmark at {self.path}"
        return f"data: {self.path}"


def resolve_data_root(data_root: str | Path | None, seed: int = 0) -> DataRoot:
    """``data_root`` if given, else ``./data`` if it exists, else the synthetic benchmark."""
    if data_root is not None:
        path = Path(data_root).expanduser()
        if not path.is_dir():
            raise DatasetError(path, "data root does not exist or is not a folder")
        return DataRoot(path.resolve(), (path / "SYNTHETIC.txt").is_file())
    if Path("data").is_dir():
        return DataRoot(Path("data").resolve(), (Path("data") / "SYNTHETIC.txt").is_file())
    return DataRoot(synthetic_root(seed), True, chosen_by_default=True)


def is_synthetic(data_root: str | Path | None) -> bool:
    """Whether :func:`resolve_data_root` would give the synthetic benchmark, without generating it
    (a named root that does not exist is the same error)."""
    if data_root is None:
        data = Path("data")
        return not data.is_dir() or (data / "SYNTHETIC.txt").is_file()
    return resolve_data_root(data_root).synthetic


def reader_of(task: str) -> type[TaskDataset]:
    """The reader class the task names in its spec (``"module:Class"``)."""
    return pkgutil.resolve_name(TASKS[task].reader)


def load_split(root: str | Path, task: str, split: str, transform=None) -> TaskDataset:
    """The reader of ``task`` on ``split`` under ``root``."""
    task_dir = find_task_dir(Path(root), TASKS[task].folder)
    return reader_of(task)(task_dir, split, transform=transform)


def check_classes(task: str, datasets: Sequence[TaskDataset]) -> None:
    """Every split of a task must agree with the registry's class count."""
    want = TASKS[task].num_classes
    for ds in datasets:
        if len(ds.classes) != want:
            raise DatasetError(ds.split_dir, f"{len(ds.classes)} {task} classes found, the model expects {want}")


def as_avalanche(ds: TaskDataset, task: str) -> TaskAwareClassificationDataset:
    """Wrap a reader with its fixed task label and the shared collate."""
    return TaskAwareClassificationDataset(
        [ds], data_attributes=[TaskLabels([TASKS[task].label] * len(ds))], collate_fn=collate_onehead
    )


@dataclass
class Stream:
    benchmark: object  # avalanche CLScenario with train_stream / test_stream
    order: list[str]
    train_sets: dict[str, TaskDataset]
    test_sets: dict[str, TaskDataset]
    classes: dict[str, list[str]] = field(default_factory=dict)


def build_stream(
    root: str | Path,
    order: Sequence[str] = DEFAULT_ORDER,
    image_size: int = 512,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    train_split: str = "train",
    test_split: str = "val",
    train_augment: bool = True,
    max_images: int | None = None,
) -> Stream:
    """Train and test streams, index-aligned, one experience per task in ``order``.

    Each experience carries its task's fixed label (``TASKS[name].label``)
    whatever the order; the test stream is evaluated after every experience.
    ``max_images`` keeps only the first images of every split (smoke runs).
    """
    train_tf = JointTransform(image_size, train=train_augment, mean=mean, std=std)
    test_tf = JointTransform(image_size, train=False, mean=mean, std=std)
    train_sets, test_sets = {}, {}
    for task in order:
        train_sets[task] = load_split(root, task, train_split, train_tf)
        test_sets[task] = load_split(root, task, test_split, test_tf)
        check_classes(task, (train_sets[task], test_sets[task]))
        if max_images:
            for ds in (train_sets[task], test_sets[task]):
                ds.samples = ds.samples[:max_images]
    # experiences expose ``task_labels``: Avalanche then uses its task-aware loaders,
    # which take the datasets' collate (ours) for training and replay batches alike
    bench = with_task_labels(benchmark_from_datasets(
        train=[as_avalanche(train_sets[t], t) for t in order],
        test=[as_avalanche(test_sets[t], t) for t in order],
    ))
    return Stream(
        benchmark=bench, order=list(order), train_sets=train_sets, test_sets=test_sets,
        classes={t: list(train_sets[t].classes) for t in order},
    )


def describe_stream(stream: Stream) -> str:
    lines = []
    for i, task in enumerate(stream.order):
        spec = TASKS[task]
        lines.append(f"  experience {i}: {task} ({spec.title}, task label {spec.label}) "
                     f"train {len(stream.train_sets[task])} / test {len(stream.test_sets[task])} images, "
                     f"{len(stream.classes[task])} classes, metric {spec.metric_name}")
    return "\n".join(lines)


def data_root_of_checkpoint(data_root: str | Path | None, meta: dict) -> DataRoot:
    """Explicit root, else the one recorded in the checkpoint, else ``./data``.

    A checkpoint trained on the synthetic benchmark regenerates it (same seed)
    when the recorded folder is gone.
    """
    if data_root is not None:
        return resolve_data_root(data_root)
    rec = meta.get("data", {})
    if rec.get("root") and Path(rec["root"]).is_dir():
        return DataRoot(Path(rec["root"]), bool(rec.get("synthetic")))
    if rec.get("synthetic"):
        return DataRoot(synthetic_root(int(rec.get("seed", 0))), True)
    if Path("data").is_dir():
        return DataRoot(Path("data").resolve(), False)
    raise DatasetError(rec.get("root", "data"), "no --data_root given and the checkpoint's training data "
                       "is not here; pass --data_root")
