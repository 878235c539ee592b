"""Gradient Projection Memory (GPM; Saha, Garg & Roy, ICLR 2021) for the shared neck and head.

Why: the classification stage has to move the shared layers to read the backbone's semantics
(its own output channels alone reach 0.69 Top-1, report.md §0.5), and EWC and LwF then hold those
layers in every direction. GPM holds them only where the earlier tasks' inputs live. For each
conv layer of neck and head it keeps an orthonormal basis of the space the layer's inputs span on
the earlier tasks' training views (the top directions of their uncentred covariance that hold
``threshold`` of its energy, each task adding what the basis misses of it), and removes from every
later update the part that acts on that space. The layer's response to the earlier tasks' inputs
then stays what it was, up to the energy left out, while the directions those inputs do not use
stay free for the new task. The basis is statistics of the layer inputs; no image is stored.

Three differences from the paper, all for this model:

* the optimizer is AdamW, so the *update* is projected after each step, not the gradient: the
  adaptive scaling and the weight decay cannot leak into the protected space;
* a conv's bias is the weight of a constant input, projected with it;
* the output layer's rows of the earlier tasks are held where they are, and the current task's
  rows are free: they are the task's own read-out.

:func:`layer_inputs`, :func:`extend_basis` and :func:`project_rows` are the algorithm;
:class:`GradientProjection` is its thin Avalanche plugin.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from .remedies import current_task


def layer_inputs(conv: nn.Conv2d, x: Tensor, positions: int, generator: torch.Generator) -> Tensor:
    """(N, in * k * k + 1): the input patches a stride-1 conv sees at up to ``positions`` random
    places per image (the same places in every image of the batch), ordered as
    ``weight.view(out, -1)``, with a constant 1 for the bias (zero when the conv has none).
    Only the sampled patches are gathered: unfolding the whole map first would move
    ``k * k`` times the map through memory for each layer."""
    (k, _), (pad, _) = conv.kernel_size, conv.padding
    b, c, h, w = x.shape
    where = torch.randperm(h * w, generator=generator)[:positions]
    rows, cols = where // w, where % w
    offsets = torch.arange(k)
    padded = F.pad(x.float(), (pad, pad, pad, pad))
    # (B, C, P, k, k): for each place its k x k window of the padded map
    patches = padded[:, :, (rows[:, None] + offsets)[:, :, None], (cols[:, None] + offsets)[:, None, :]]
    flat = patches.permute(0, 2, 1, 3, 4).reshape(b * len(where), c * k * k)
    ones = torch.full((flat.shape[0], 1), 1.0 if conv.bias is not None else 0.0)
    return torch.cat([flat, ones], dim=1)


def extend_basis(basis: Tensor | None, cov: Tensor, threshold: float) -> Tensor:
    """GPM's criterion on an uncentred covariance ``cov`` (d, d) of a new task's inputs: add the
    fewest directions orthogonal to ``basis`` (d, r) such that the basis holds ``threshold`` of
    the new task's input energy; returns the extended orthonormal basis (d, r')."""
    cov = cov.double()
    d = cov.shape[0]
    basis = basis.double() if basis is not None else cov.new_zeros(d, 0)
    total = float(torch.trace(cov))
    if total <= 0:
        return basis.float()
    kept = float(torch.trace(basis.T @ cov @ basis))
    rest = torch.eye(d, dtype=cov.dtype) - basis @ basis.T
    values, vectors = torch.linalg.eigh(rest @ cov @ rest)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    slack = 1e-9 * total  # rounding: threshold 1.0 means every direction with energy, not all d
    need = threshold * total - kept - slack
    if need <= 0:
        return basis.float()
    k = int(torch.searchsorted(torch.cumsum(values, 0), torch.tensor(need, dtype=values.dtype))) + 1
    k = min(k, int((values > slack).sum()), d - basis.shape[1])
    new = vectors[:, :k]
    new = new - basis @ (basis.T @ new)  # exact orthogonality despite rounding
    new, _ = torch.linalg.qr(new)
    return torch.cat([basis, new], dim=1).float()


def project_rows(delta: Tensor, basis: Tensor) -> Tensor:
    """Rows of ``delta`` (out, d) without their components in the span of ``basis`` (d, r)."""
    return delta - (delta @ basis) @ basis.T


def protected_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The convs of neck and head before the output layer, by module name."""
    last = f"head.{len(model.head) - 1}"
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and name.split(".")[0] in ("neck", "head") and name != last}


def matches(layer: str, prefix: str) -> bool:
    """``prefix`` names ``layer`` or a module holding it (``neck.lateral`` holds ``neck.lateral.2``)."""
    return layer == prefix or layer.startswith(prefix + ".")


def options_text(options: dict[str, Any]) -> str:
    """``threshold 0.99, positions 256, ...``: the options bases were made with, for the log."""
    return ", ".join(f"{k} {', '.join(f'{p}={t:g}' for p, t in v.items()) if isinstance(v, dict) else format(v, 'g')}"
                     for k, v in options.items())


def check_no_norms(model: nn.Module) -> None:
    """GPM protects conv layers: a normalisation in neck or head would keep moving what they see."""
    norms = [name for name, m in model.named_modules()
             if name.split(".")[0] in ("neck", "head") and isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm))]
    if norms:
        raise ValueError(f"the gpm remedy needs a neck and head without normalisation (model norm 'none'); "
                         f"this model has {norms[0]}")


@torch.no_grad()
def input_covariances(model: nn.Module, dataset, positions: int, batch_size: int, seed: int,
                      device: str | torch.device = "cpu", num_workers: int = 0,
                      views: int | None = None) -> dict[str, Tensor]:
    """Uncentred covariance (d, d) of each protected layer's inputs over ``dataset``'s samples
    (a seeded random ``views`` of them when given: a few hundred views at a few hundred places
    each are already far more samples than a layer has inputs)."""
    layers = protected_layers(model)
    cov = {name: None for name in layers}
    generator = torch.Generator().manual_seed(seed)
    if views is not None and len(dataset) > views:
        dataset = Subset(dataset, torch.randperm(len(dataset), generator=generator)[:views].tolist())

    def hook(name):
        def collect(module, args, output):
            rows = layer_inputs(module, args[0].cpu(), positions, generator)
            c = (rows.T @ rows).double()  # a float32 product per batch, summed in float64
            cov[name] = c if cov[name] is None else cov[name] + c
        return collect

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        collate = getattr(getattr(dataset, "dataset", dataset), "collate_fn", None)
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers):
            model(batch[0].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: c for name, c in cov.items() if c is not None}


class GradientProjection(SupervisedPlugin):
    """GPM as a plugin: bases at the end of each stage, projected updates in the stages after.

    A run forked from another remedy has no bases for its finished stages: ``rebuild_stage``
    computes each from that stage's checkpoint and training views, what the end of the stage
    would have computed, so the fork continues as a run that had gpm from the start."""

    def __init__(self, threshold: float = 0.97, positions: int = 256, views: int = 480, batch_size: int = 16,
                 seed: int = 0, layer_thresholds: dict[str, float] | None = None):
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"gpm threshold must be in (0, 1], not {threshold}")
        bad = {k: t for k, t in (layer_thresholds or {}).items() if not 0.0 <= t <= 1.0}
        if bad:
            raise ValueError(f"gpm layer thresholds must be in [0, 1] (0: the layer is not held), not {bad}")
        if positions < 1 or views < 1:
            raise ValueError(f"gpm positions and views must be at least 1, not {positions} and {views}")
        self.threshold, self.positions, self.views = threshold, positions, views
        # layer-name prefix -> its own threshold (the first prefix that matches wins; 0 leaves it free)
        self.layer_thresholds = dict(layer_thresholds or {})
        self.batch_size, self.seed = batch_size, seed
        self.bases: dict[str, Tensor] = {}
        self.stages: list[int] = []  # finished stages the bases hold
        self._before: dict[str, Tensor] = {}
        self._layers: dict[str, nn.Conv2d] = {}  # the stage's protected convs (those with a basis)
        self._output: nn.Conv2d | None = None
        self._own_rows: slice | None = None
        self.active = True  # False: a stage whose plan leaves projection out (its bases are still made)
        self._remade: str | None = None  # why a restore dropped stored bases (the next note says it)

    # -- memory ----------------------------------------------------------------------------------
    def threshold_of(self, layer: str) -> float:
        """The energy share held for ``layer``: the first ``layer_thresholds`` prefix it starts with, or the threshold."""
        return next((t for prefix, t in self.layer_thresholds.items() if matches(layer, prefix)), self.threshold)

    def check_model(self, model: nn.Module) -> None:
        """Every ``layer_thresholds`` prefix names at least one protected conv of ``model``."""
        names = list(protected_layers(model))
        unknown = [p for p in self.layer_thresholds if not any(matches(n, p) for n in names)]
        if unknown:
            raise ValueError(f"gpm layer threshold for {unknown[0]!r} matches no conv gradient projection holds; "
                             f"they are {', '.join(names)}")

    def memorise(self, strategy, index: int, dataset) -> None:
        """Extend every layer's basis by stage ``index``'s inputs under the model as it now is."""
        check_no_norms(strategy.model)
        with torch.random.fork_rng():  # the pass draws nothing from the stage's random stream (fork = scratch)
            covs = input_covariances(strategy.model, dataset, self.positions, self.batch_size,
                                     self.seed * 7919 + index, strategy.device, views=self.views)
        for name, c in covs.items():
            self.bases[name] = extend_basis(self.bases.get(name), c, self.threshold_of(name))
        self.stages.append(index)

    def ranks(self) -> dict[str, tuple[int, int]]:
        """Layer -> (protected directions, input dimension)."""
        return {name: (b.shape[1], b.shape[0]) for name, b in self.bases.items()}

    def note(self) -> str | None:
        """The run log's line on how much of each layer the earlier tasks hold."""
        if not self.bases:
            return None
        remade, self._remade = self._remade, None
        held = ", ".join(f"{name} {r}/{d}" for name, (r, d) in self.ranks().items())
        return f"gradient projection holds (input directions per layer, of all): {held}" + (
            f" ({remade})" if remade else "")

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience
        stream = getattr(exp, "origin_stream", None)
        if stream is not None and exp.current_experience == len(stream) - 1:
            return  # the last stage: no later stage would read its bases
        self.memorise(strategy, int(strategy.clock.train_exp_counter), exp.dataset)

    def needs_rebuild(self, index: int) -> bool:
        return index not in self.stages

    def read_later(self, acts_later: bool, stages_left: int) -> bool:
        """Whether the ``stages_left`` stages still to train read the finished stages' bases: when
        projection acts in one of them, or when one that is not the last extends the bases
        (each stage adds what the bases before it miss).  A fork whose last stage trains
        without projection skips making them."""
        return acts_later or stages_left > 1

    def rebuild_stage(self, strategy, index: int, experience, **kwargs) -> None:
        """The bases the end of finished stage ``index`` made: the model holds that stage's
        checkpoint (the run's resume loads it), stages are rebuilt in order."""
        if index not in self.stages:
            self.memorise(strategy, index, experience.dataset)

    # -- projection ------------------------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        # the bases only change between stages: the layers a step watches are found once per stage
        model = strategy.model
        self.check_model(model)
        self._layers = {name: m for name, m in protected_layers(model).items() if name in self.bases}
        self._output = model.head[-1]
        self._own_rows = model.output_slices()[current_task(strategy)]

    def _watched(self) -> dict[str, nn.Conv2d]:
        return {**self._layers, "output": self._output}

    def before_update(self, strategy, **kwargs):
        if not self.stages or not self.active:
            return
        self._before = {}
        for name, m in self._watched().items():
            if m.weight.requires_grad:
                self._before[name] = m.weight.detach().clone()
                if m.bias is not None:
                    self._before[name + ".bias"] = m.bias.detach().clone()

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        if not self._before:
            return
        for name, m in self._watched().items():
            if name not in self._before:
                continue
            w0, b0 = self._before[name], self._before.get(name + ".bias")
            if m is self._output:  # earlier tasks' read-outs stay; the current task's rows move freely
                keep = torch.ones(m.weight.shape[0], dtype=torch.bool)
                keep[self._own_rows] = False
                m.weight[keep] = w0[keep]
                if b0 is not None:
                    m.bias[keep] = b0[keep]
                continue
            delta = (m.weight - w0).reshape(w0.shape[0], -1)
            bias = (m.bias - b0)[:, None] if b0 is not None else delta.new_zeros(delta.shape[0], 1)
            moved = project_rows(torch.cat([delta, bias], dim=1), self.bases[name].to(delta.device))
            m.weight.copy_(w0 + moved[:, :-1].reshape(w0.shape))
            if b0 is not None:
                m.bias.copy_(b0 + moved[:, -1])
        self._before = {}

    # -- resume ----------------------------------------------------------------------------------
    def made_with(self) -> dict[str, Any]:
        """The options the bases depend on (stored beside them)."""
        made = {"threshold": self.threshold, "positions": self.positions, "views": self.views}
        return {**made, **({"layer_thresholds": dict(self.layer_thresholds)} if self.layer_thresholds else {})}

    def resume_state(self) -> dict[str, Any]:
        return {"bases": {k: v.clone() for k, v in self.bases.items()}, "stages": list(self.stages),
                "made_with": self.made_with()}

    def restore(self, state: dict[str, Any], strategy, finished) -> None:
        """Stored bases made with other options (a resume or fork that changed the threshold,
        or bases from before the options were stored) are not used: the run makes them again
        from the finished stages' checkpoints, as under the new options the stages' ends would."""
        stored = state.get("made_with")
        if state.get("bases") and stored != self.made_with():
            made = ("with " + options_text(stored)) if stored else "with unrecorded options"
            ours = options_text(self.made_with())
            self._remade = (f"made again from the finished stages' checkpoints: the stored ones were made {made}, "
                            f"this run asks for {ours}")
            state = {}
        self.bases = {k: v.clone() for k, v in state.get("bases", {}).items()}
        self.stages = [int(i) for i in state.get("stages", [])]
