"""The run folder's format: every file a run writes, its name, and how it is read back.

A run folder holds

==========================  ==========================================================================
``config.json``             the run's settings (``RunConfig`` fields), written when the run starts
``log.txt``                 Avalanche's text log
``tb/``                     TensorBoard events
``stage<K>_<task>.pt``      the model checkpoint after stage K (self-contained, see checkpoint.py)
``resume_epoch.pt``         the unfinished stage after its latest epoch (weights, optimizer, RNG, clock)
``resume_stage<K>.pt``      the state right after stage K: metric rows so far, remedy state by registry name
``resume.pt``               the latest of the ``resume_stage<K>.pt``
``metrics.json``            the finished run's summary (DESIGN.md's contract, plus each stage's last epoch loss)
``metrics_detail.json``     every evaluation metric after every stage
``matrix.png``              the forgetting figure
``model.pt``                the final model: a second name (hard link) of the last stage's checkpoint
``forked_from.json``        where a fork (experiments/fork_run.py) took its first stages from
==========================  ==========================================================================

Every state file is written through a temporary file (``.<name>.tmp``) and loaded with
``torch.load(..., weights_only=True)``; folders written before a field existed still resume.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import read_checkpoint, save_checkpoint
from .errors import OneHeadError
from .evaluation import epoch_loss_key

#: run folders written before remedy state was keyed by registry name kept it by plugin class name
LEGACY_REMEDY_KEYS = {"OneHeadEWC": "ewc", "TaskBudgetReplay": "replay", "PreviousModel": "teacher",
                      "PretrainedAnchor": "anchor"}


def empty_progress() -> dict[str, Any]:
    """The progress record of a run before its first stage has finished."""
    return {"done": 0, "matrix": [], "extras": [], "stage_seconds": {}, "last_epoch_loss": {}}


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or (str(e).splitlines() or [e.__class__.__name__])[0][:100]


def _first_line(e: BaseException) -> str:
    return f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:120]}"


def _file(name: str) -> property:
    """The path of the run folder's file ``name``, as a read-only attribute."""
    def path(folder: RunFolder) -> Path:
        return folder.path / name
    return property(path, doc=f"``{name}`` in the run folder")


class RunFolder:
    """One run folder: the paths of its files, and reading and writing what they hold."""

    CONFIG = "config.json"
    LOG = "log.txt"
    TENSORBOARD = "tb"
    EPOCH_STATE = "resume_epoch.pt"
    RESUME_STATE = "resume.pt"
    METRICS = "metrics.json"
    METRICS_DETAIL = "metrics_detail.json"
    MATRIX_FIGURE = "matrix.png"
    MODEL = "model.pt"
    FORKED_FROM = "forked_from.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._warned_stage: int | None = None  # the stage whose failed epoch-state write was said

    def __str__(self) -> str:
        return str(self.path)

    # --- names --------------------------------------------------------------------------------
    config_file = _file(CONFIG)
    log_file = _file(LOG)
    tensorboard_dir = _file(TENSORBOARD)
    epoch_state_file = _file(EPOCH_STATE)
    resume_file = _file(RESUME_STATE)
    metrics_file = _file(METRICS)
    metrics_detail_file = _file(METRICS_DETAIL)
    matrix_figure = _file(MATRIX_FIGURE)
    model_file = _file(MODEL)
    forked_from_file = _file(FORKED_FROM)

    def stage_checkpoint(self, stage: int, task: str) -> Path:
        """The checkpoint after ``stage`` (1-based), which trained ``task``."""
        return self.path / f"stage{stage}_{task}.pt"

    @staticmethod
    def stage_state_name(stage: int) -> str:
        return f"resume_stage{stage}.pt"

    def stage_state_file(self, stage: int) -> Path:
        """The state right after ``stage`` (1-based), kept so that a fork can start there
        (experiments/fork_run.py): another remedy after stage 1, another schedule later on."""
        return self.path / self.stage_state_name(stage)

    def stage_state_files(self) -> dict[int, Path]:
        """Every ``resume_stage<K>.pt`` there, by K."""
        found = ((re.fullmatch(r"resume_stage(\d+)\.pt", p.name), p) for p in self.path.glob("resume_stage*.pt"))
        return dict(sorted((int(m.group(1)), p) for m, p in found if m))

    # --- what the folder holds ----------------------------------------------------------------
    def is_run_folder(self) -> bool:
        return self.config_file.is_file()

    def is_finished(self) -> bool:
        return self.metrics_file.is_file()

    def can_resume(self) -> bool:
        """A finished stage or epoch to continue from."""
        return self.resume_file.is_file() or self.epoch_state_file.is_file()

    def has_saved_state(self) -> bool:
        """Any state file at all (even one of a stage only: a fork can start there)."""
        return self.can_resume() or bool(self.stage_state_files())

    # --- settings and results -----------------------------------------------------------------
    def create(self, config: dict[str, Any] | None = None) -> None:
        """Make the folder; with ``config``, write ``config.json`` (a resumed run keeps its own)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if config is not None:
                self.write_config(config)
        except OSError as e:
            raise OneHeadError(self.path, f"cannot create the run folder ({e.strerror or e})") from None

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_file.write_text(json.dumps(config, indent=2))

    def read_config(self) -> dict[str, Any]:
        """``config.json``, or ``{}`` when the folder has none."""
        return self._read_json(self.config_file) if self.config_file.is_file() else {}

    def write_metrics(self, metrics: dict[str, Any], detail: list[dict[str, float]]) -> None:
        self.metrics_file.write_text(json.dumps(metrics, indent=2))
        self.metrics_detail_file.write_text(json.dumps(detail, indent=2))

    def read_metrics(self) -> dict[str, Any]:
        if not self.metrics_file.is_file():
            raise OneHeadError(self.metrics_file, "missing (not a finished run folder)")
        return self._read_json(self.metrics_file)

    def write_forked_from(self, record: dict[str, Any]) -> None:
        self.forked_from_file.write_text(json.dumps(record, indent=2))

    def read_forked_from(self) -> dict[str, Any] | None:
        return self._read_json(self.forked_from_file) if self.forked_from_file.is_file() else None

    def last_epoch_loss(self, task: str) -> float | None:
        """The training loss of ``task``'s stage in its last epoch (Avalanche's ``Loss_Epoch``), as
        ``metrics.json`` records it; for a run folder from before it did, the last such log line."""
        recorded = self.read_metrics().get("last_epoch_loss", {}) if self.is_finished() else {}
        if task in recorded:
            return float(recorded[task])
        if not self.log_file.is_file():
            return None
        logged = re.findall(rf"{re.escape(epoch_loss_key(task))} = ([0-9.eE+-]+)", self.log_file.read_text())
        return float(logged[-1]) if logged else None

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise OneHeadError(path, f"not a readable JSON file ({_first_line(e)})") from None

    # --- checkpoints ----------------------------------------------------------------------------
    def save_stage_checkpoint(self, stage: int, task: str, model, **meta: Any) -> Path:
        return save_checkpoint(self.stage_checkpoint(stage, task), model, **meta)

    def stage_weights(self, stage: int, task: str) -> dict[str, torch.Tensor]:
        return read_checkpoint(self.stage_checkpoint(stage, task))["state_dict"]

    def save_final_model(self, stage: int, task: str, model, **meta: Any) -> None:
        """``model.pt``: a second name (hard link) of the last stage's checkpoint, which holds the same
        weights and provenance, so the folder keeps one copy; written anew where links fail."""
        if not self._link(self.stage_checkpoint(stage, task), self.model_file):
            save_checkpoint(self.model_file, model, **meta)

    @staticmethod
    def _link(target: Path, name: Path) -> bool:
        tmp = name.with_name(f".{name.name}.link")
        try:
            tmp.unlink(missing_ok=True)
            os.link(target, tmp)
            os.replace(tmp, name)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False

    # --- resume states ------------------------------------------------------------------------
    @staticmethod
    def _save_through_temporary(state: dict[str, Any], path: Path) -> None:
        """``torch.save`` to ``.<name>.tmp``, then renamed: no half-written state file, ever."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    def write_epoch_state(self, state: dict[str, Any], log: Callable[[str], None] = print) -> bool:
        """``resume_epoch.pt``: the unfinished stage after its latest epoch.  A failed write is said
        once per stage and the run goes on (only a stop before the stage ends would lose its epochs)."""
        try:
            self._save_through_temporary(state, self.epoch_state_file)
            return True
        except (OSError, RuntimeError) as e:
            if self._warned_stage != state["stage"]:
                self._warned_stage = state["stage"]
                log(f"warning: {self.epoch_state_file}: could not write the state after epoch "
                    f"{state['epochs_done']} ({_reason(e)}); a stop before this stage ends would lose its epochs")
            return False

    def clear_epoch_state(self) -> None:
        """A finished stage's state supersedes its epoch states."""
        with contextlib.suppress(OSError):
            self.epoch_state_file.unlink(missing_ok=True)

    def write_stage_state(self, progress: dict[str, Any], remedies: dict[str, dict[str, Any]]) -> None:
        """The state after the stage just finished (``remedies``: each remedy's state by registry
        name): its own ``resume_stage<K>.pt`` first, then ``resume.pt``.  If a write fails (disk
        full) nothing half-written stays, and the files already in place still resume the run."""
        state = {"progress": progress, "remedies": remedies}
        done = int(progress["done"])
        for path in (self.stage_state_file(done), self.resume_file):
            try:
                self._save_through_temporary(state, path)
            except (OSError, RuntimeError) as e:
                kept = done if path == self.resume_file else done - 1
                if kept:
                    then = f"--resume {self.path} continues after stage {kept}"
                elif self.epoch_state_file.is_file():
                    then = f"--resume {self.path} repeats only the end of stage {done}"
                else:
                    then = "no stage is resumable yet: start the run again"
                raise OneHeadError(path, f"could not write the resume state after stage {done} "
                                   f"({_reason(e)}); free some space, then {then}") from None

    def copy_stage_state(self, state: dict[str, Any], stage: int) -> None:
        """``state`` (the state right after ``stage``, from another folder) as this folder's
        ``resume_stage<K>.pt`` and ``resume.pt``: what a fork continues from."""
        for path in (self.stage_state_file(stage), self.resume_file):
            torch.save(state, path)

    @staticmethod
    def read_state(f: Path) -> dict[str, Any]:
        """A stage state file, loaded safely (``weights_only``), checked for the fields resuming reads,
        its remedy state keyed by registry name (also in folders that keyed it by class name)."""
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, foreign or hostile (a pickle that is not plain data)
            raise OneHeadError(f, f"not a readable resume state ({_first_line(e)})") from None
        progress = state.get("progress") if isinstance(state, dict) else None
        if not isinstance(progress, dict) or not isinstance(state.get("remedies", {}), dict):
            raise OneHeadError(f, "not a resume state (no 'progress' record)")
        done = progress.get("done")
        matrix = progress.get("matrix")
        if isinstance(done, bool) or not isinstance(done, int) or done < 1:
            raise OneHeadError(f, f"resume state names no finished stage (done = {done!r})")
        if not (isinstance(matrix, list) and len(matrix) == done and all(
                isinstance(r, list) and all(isinstance(v, (int, float)) for v in r) for r in matrix)):
            raise OneHeadError(f, f"resume state's metric matrix does not hold one row per finished stage ({done})")
        if not all(isinstance(progress.get(k, kind()), kind) for k, kind in (
                ("extras", list), ("stage_seconds", dict), ("last_epoch_loss", dict))):
            raise OneHeadError(f, "resume state's 'extras', 'stage_seconds' or 'last_epoch_loss' record is damaged")
        state["remedies"] = {LEGACY_REMEDY_KEYS.get(k, k): v for k, v in state.get("remedies", {}).items()}
        return state

    @staticmethod
    def read_epoch_state(f: Path) -> dict[str, Any]:
        """``resume_epoch.pt``, loaded safely and checked for the fields continuing a stage reads."""
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise OneHeadError(f, f"not a readable epoch state ({_first_line(e)})") from None
        ok = isinstance(state, dict) and all(k in state for k in ("stage", "epochs_done", "model", "optimizer",
                                                                  "parts", "clock", "rng", "seconds"))
        if not ok or not all(isinstance(state[k], int) and not isinstance(state[k], bool) and state[k] >= 0
                             for k in ("stage", "epochs_done")):
            raise OneHeadError(f, "not an epoch state (its 'stage', 'epochs_done', weights or RNG state are missing)")
        return state

    def state_after(self, stage: int) -> tuple[Path, dict[str, Any]] | None:
        """The state saved right after ``stage``: its ``resume_stage<K>.pt``, else ``resume.pt`` if
        that is the one; None when neither is."""
        for f in (self.stage_state_file(stage), self.resume_file):
            if f.is_file():
                state = self.read_state(f)
                if int(state["progress"]["done"]) == stage:
                    return f, state
        return None

    def load_resume_state(self, stages: list[str] | None = None) -> dict[str, Any]:
        """The latest resumable state: ``resume.pt``, or a later ``resume_stage<K>.pt`` when writing
        ``resume.pt`` after it failed; under ``"epoch"`` the state of the next stage after its latest
        epoch (``resume_epoch.pt``), if one was saved.  With ``stages`` (the run's stage names) the
        state must fit them and its last stage's checkpoint must be there."""
        f = self.resume_file
        state = self.read_state(f) if f.is_file() else None
        done = int(state["progress"]["done"]) if state else 0
        later = [(k, p) for k, p in self.stage_state_files().items() if k > done]
        if later:
            f = later[-1][1]
            state = self.read_state(f)
            done = int(state["progress"]["done"])
        epoch_file = self.epoch_state_file
        epoch = self.read_epoch_state(epoch_file) if epoch_file.is_file() else None
        if epoch is not None and epoch["stage"] != done:  # left over from a stage that has finished since
            epoch = None
        if state is None and epoch is None:
            raise OneHeadError(self.path, f"nothing to resume: no {self.RESUME_STATE} or {self.EPOCH_STATE} "
                                          "(no epoch finished yet?)")
        if state is None:
            state = {"progress": empty_progress(), "remedies": {}}
        state["epoch"] = epoch
        if stages is not None:
            if done > len(stages):
                raise OneHeadError(f, f"resume state says {done} stages finished, the run has {len(stages)}")
            if epoch is not None and (done >= len(stages) or epoch.get("task", stages[done]) != stages[done]):
                raise OneHeadError(epoch_file, f"its stage {epoch['stage'] + 1} is not a stage of this run")
            ckpt = self.stage_checkpoint(done, stages[done - 1]) if done else None
            if ckpt is not None and not ckpt.is_file():
                raise OneHeadError(ckpt, f"missing: the checkpoint of stage {done}, which {f.name} resumes from")
        return state
