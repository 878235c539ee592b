"""The one-head network: timm backbone -> one FPN layer -> one 3-layer head.

The head is a single branch whose LAST layer emits every task's output as a
channel group of one tensor at stride 8 (order fixed by task label: seg, det,
cls).  Classification logits are the spatial mean of their channel group.

Neck and head have no normalisation layers by default (GroupNorm / BatchNorm
are options): nothing there keeps running statistics that a later task could
shift, and their 3x3 convs start as identities (Dirac), so step 0 already sees
the ImageNet features.  The backbone's BatchNorm layers stay in eval mode
(ImageNet statistics, affine still trainable) by default, for the same reason
(``freeze_backbone_bn``).
"""
from __future__ import annotations

import copy
import functools
import itertools
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import rules
from .backbones import LITE0, create_backbone, last_stage
from .detection import DetectionConfig
from .feature_cache import BackboneFeatures
from .tasks import TASKS, check_pool, decode_batch, spatial_pool


@dataclass
class ModelConfig:
    backbone: str = LITE0
    pretrained: bool = True
    neck_channels: int = 96
    head_channels: int = 96
    head_layers: int = 3  # rules.HEAD_LAYERS (2 or 3); the last one emits all outputs
    norm: str = "none"  # neck/head normalisation: "none", "gn" (GroupNorm) or "bn" (BatchNorm)
    groups: int = 16  # GroupNorm groups in neck and head
    # "dirac": the 3x3 convs of neck and head start as identities, so at initialisation
    # the head sees the FPN features unchanged (ImageNet semantics kept); "default": PyTorch init
    init: str = "dirac"
    # a linear path from the laterals to the output layer: the FPN output conv without ReLU (as in
    # torchvision's FPN) and every hidden head layer adding its input back (x + relu(conv x)).
    # Measured (linear probe, Imagenette val, after the seg and det stages): the pooled sum of the
    # laterals classifies 0.90, the pooled output of a ReLU neck 0.80, the head's last hidden layer
    # 0.77: the ReLUs trained for the dense tasks drop what classification needs.
    neck_relu: bool = True
    head_residual: bool = False
    # how an image-level output (classification's logits) pools its map: "mean", or "lse", the
    # log-sum-exp smooth maximum with sharpness ``pool_sharpness`` (``tasks.spatial_pool``)
    pool: str = "mean"
    pool_sharpness: float = 1.0
    # channels of a FIXED projection (random orthonormal rows, drawn once from the run's seed and
    # kept in the weights) of the backbone's stride-32 map, which the neck adds to its output and
    # every hidden head layer passes on next to its own output: the output layer always reads
    # the ImageNet semantics of the frozen backbone, whatever the dense stages did to the trained
    # channels.  No stage trains them, so there is nothing in them to forget.  Measured (logistic
    # regression on their global average, Imagenette train + val, 5-fold x 3): 64 channels
    # classify 0.90-0.92, 96 channels 0.91-0.94, the whole 320-channel map 0.94.  0: none.
    semantic_channels: int = 0
    # which tasks' output rows read the semantic channels: None, every layer (the hidden convs
    # and every task's rows); a list of tasks, only those tasks' rows, and the hidden convs read
    # only the trained channels, so every other task computes exactly as without semantic
    # channels.  Measured (detection alone, seed 0): detection that reads them ends at mAP 0.048,
    # against 0.063 without them.
    semantic_readers: list[str] | None = None
    freeze_backbone_bn: bool = True
    num_classes: dict[str, int] = field(default_factory=lambda: {k: s.num_classes for k, s in TASKS.items()})
    detection: dict[str, Any] = field(default_factory=lambda: asdict(DetectionConfig()))

    def task_settings(self, head_stride: int | None = None) -> dict[str, dict[str, Any]]:
        """Each task's own settings from this config (the keyword arguments of its loss,
        decoding and evaluator); with ``head_stride`` a task checks them against the head."""
        return {t: spec.settings(self, head_stride) if spec.settings else {} for t, spec in TASKS.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # what checkpoints written before a field existed were built with
    LEGACY = {"norm": "gn", "init": "default"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{**cls.LEGACY, **{k: v for k, v in d.items() if k in known}})


class OneHeadOutput(dict):
    """Task name -> raw output (seg (B,C,h,w), det (B,C+5,h,w), cls (B,C)); ``features``
    holds the neck's trained output channels for feature distillation."""

    features: Tensor | None = None


def conv_norm_relu(cin: int, cout: int, k: int, norm: str, groups: int, relu: bool = True) -> nn.Sequential:
    """One layer: conv + normalisation + ReLU (``norm="none"``: conv with bias + ReLU;
    ``relu=False``: no activation)."""
    layers: dict[str, nn.Module] = {
        "gn": nn.GroupNorm(groups, cout), "bn": nn.BatchNorm2d(cout), "none": nn.Identity()}
    if norm not in layers:
        raise ValueError(f"norm must be one of {', '.join(layers)}, not {norm!r}")
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=norm == "none"),
                         layers[norm], nn.ReLU(inplace=True) if relu else nn.Identity())


class Residual(nn.Module):
    """``x + layer(x)``: a head layer that keeps its input (one layer, not a branch)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layer(x)


class Carry(nn.Module):
    """A hidden head layer that passes the last ``carried`` channels of its input (the neck's
    fixed semantic channels) on unchanged next to its own output: ``[layer(x), x[:, -carried:]]``
    (``residual``: ``[x[:, :n] + layer(x), x[:, -carried:]]``).  One layer of the one branch, with
    a DenseNet-style skip: its conv reads every channel, the carried ones included, unless
    ``reads_carried`` is False (then it reads only the others)."""

    def __init__(self, layer: nn.Module, carried: int, residual: bool = False, reads_carried: bool = True):
        super().__init__()
        self.layer, self.carried, self.residual, self.reads_carried = layer, carried, residual, reads_carried

    def forward(self, x: Tensor) -> Tensor:
        trained = x[:, : x.shape[1] - self.carried]
        y = self.layer(x if self.reads_carried else trained)
        if self.residual:
            y = x[:, : y.shape[1]] + y
        return torch.cat([y, x[:, x.shape[1] - self.carried:]], 1)

    def without_carried(self, x: Tensor) -> Tensor:
        """The layer's own output from an input that lacks the carried channels (only for a
        layer that does not read them): what :meth:`forward` computes, without the channels it
        would pass on."""
        if self.reads_carried:
            raise ValueError("a Carry layer that reads its carried channels needs them")
        y = self.layer(x)
        return x[:, : y.shape[1]] + y if self.residual else y


class RowMaskedConv(nn.Conv2d):
    """The output layer when only some tasks read the semantic channels: a 1x1 conv whose
    weight is multiplied by a fixed 0/1 ``read_mask`` (a buffer), so a row never reads the
    input channels its mask closes, and gets no gradient from them.  Still one conv layer (the
    product folds into a constant on export)."""

    def __init__(self, cin: int, cout: int, read_mask: Tensor):
        super().__init__(cin, cout, 1)
        self.register_buffer("read_mask", read_mask.reshape(cout, cin, 1, 1).float())

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def masked_weight(self) -> Tensor:
        """The weight the conv applies: what a row never reads is 0."""
        return self.weight * self.read_mask

    def reads(self, rows: slice) -> Tensor:
        """Which input channels the given rows read (bool, per input channel)."""
        return self.read_mask[rows, :, 0, 0].amax(0) > 0

    def first_inputs(self, x: Tensor) -> Tensor:
        """The conv on an input holding only its first ``x.shape[1]`` channels: exact for every row
        whose mask closes the others (the rest of the rows get a meaningless value)."""
        n = x.shape[1]
        return self._conv_forward(x, self.masked_weight()[:, :n], self.bias)


class FPNNeck(nn.Module):
    """ONE FPN layer: lateral 1x1 convs, top-down sum to stride 8, one 3x3 output conv.

    ``semantic`` > 0 adds that many channels after the output conv: a fixed 1x1 projection
    (a buffer, never trained) of the deepest map, upsampled to stride 8 (``ModelConfig.semantic_channels``)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm: str, groups: int,
                 relu: bool = True, semantic: int = 0):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = conv_norm_relu(out_channels, out_channels, 3, norm, groups, relu)
        if semantic < 0:
            raise ValueError(f"semantic_channels must be >= 0, not {semantic}")
        if semantic:
            if semantic > in_channels[-1]:
                raise ValueError(f"semantic_channels must be at most the deepest map's {in_channels[-1]} "
                                 f"channels (orthonormal rows), not {semantic}")
            projection = torch.empty(semantic, in_channels[-1])
            nn.init.orthogonal_(projection)
            self.register_buffer("semantic_projection", projection[:, :, None, None])
        else:
            self.semantic_projection = None

    @property
    def semantic_channels(self) -> int:
        return 0 if self.semantic_projection is None else int(self.semantic_projection.shape[0])

    def forward(self, feats: Sequence[Tensor], semantic: bool = True) -> Tensor:
        """The FPN output, followed by the semantic channels unless ``semantic`` is False."""
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="nearest")
        x = self.output(x)
        if self.semantic_projection is None or not semantic:
            return x
        s = F.conv2d(feats[-1], self.semantic_projection.to(feats[-1].dtype))
        return torch.cat([x, F.interpolate(s, size=x.shape[-2:], mode="nearest")], 1)


class OneHeadNet(nn.Module):
    #: the tasks whose outputs a forward pass returns (None: every task's); set by :meth:`producing`
    only_outputs: tuple[str, ...] | None = None
    #: True in a run whose stage plans train the backbone's last stage (part ``tail``): a pass on
    #: cached features then recomputes the deepest map from the cached second-deepest one through
    #: the model's own last stage, since the cached deepest map is that of the untrained stage
    live_tail: bool = False

    def __init__(self, cfg: ModelConfig | None = None, pretrained: bool | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        if not rules.head_layers_allowed(self.cfg.head_layers):
            low, high = rules.HEAD_LAYERS
            raise ValueError(f"head_layers must be {low}..{high} (challenge rule), not {self.cfg.head_layers}")
        bb = create_backbone(self.cfg.backbone, self.cfg.pretrained if pretrained is None else pretrained)
        self.backbone = bb.body
        self.mean, self.std, self.weights_source = bb.mean, bb.std, bb.pretrained
        # what each task's loss, decoding and evaluator take (e.g. detection's DetectionConfig)
        self.task_settings = self.cfg.task_settings(head_stride=bb.strides[0])
        check_pool(self.cfg.pool)  # at construction, not at the first forward pass
        self.pool = partial(spatial_pool, kind=self.cfg.pool, sharpness=self.cfg.pool_sharpness)
        k = self.cfg.semantic_channels
        self.neck = FPNNeck(bb.channels, self.cfg.neck_channels, self.cfg.norm, self.cfg.groups,
                            self.cfg.neck_relu, semantic=k)
        # channel groups in task-label order, independent of the training order
        self.task_order = sorted(TASKS, key=lambda t: TASKS[t].label)
        self.splits = [TASKS[t].out_channels(self.cfg.num_classes[t]) for t in self.task_order]
        c, hc = self.cfg.neck_channels, self.cfg.head_channels
        readers = self.cfg.semantic_readers
        if readers is not None:
            if not k:
                raise ValueError("semantic_readers needs semantic_channels > 0")
            unknown = [t for t in readers if t not in TASKS]
            if unknown:
                raise ValueError(f"semantic_readers: unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
        hidden_reads = k if readers is None else 0
        hidden = [conv_norm_relu((c if i == 0 else hc) + hidden_reads, hc, 3, self.cfg.norm, self.cfg.groups)
                  for i in range(self.cfg.head_layers - 1)]
        if self.cfg.head_residual and c != hc:
            raise ValueError(f"head_residual needs head_channels == neck_channels (got {hc} and {c})")
        if k:
            hidden = [Carry(layer, k, self.cfg.head_residual, reads_carried=readers is None) for layer in hidden]
        elif self.cfg.head_residual:
            hidden = [Residual(layer) for layer in hidden]
        self.head = nn.Sequential(*hidden, self._output_layer(hc + k, k, readers))
        if self.cfg.init == "dirac":
            self._init_identity()
        elif self.cfg.init != "default":
            raise ValueError(f"init must be 'dirac' or 'default', not {self.cfg.init!r}")
        self._init_output_bias()
        # channels-last convolutions run about 3x faster on CPU (forward + backward, measured)
        self.to(memory_format=torch.channels_last)

    def _output_layer(self, cin: int, k: int, readers: list[str] | None) -> nn.Conv2d:
        """The one output layer: a 1x1 conv, row-masked when only ``readers`` read the last
        ``k`` (semantic) input channels."""
        cout = sum(self.splits)
        if readers is None:
            return nn.Conv2d(cin, cout, 1)
        mask = torch.ones(cout, cin)
        for t, rows in self.output_slices().items():
            if t not in readers:
                mask[rows, cin - k:] = 0
        return RowMaskedConv(cin, cout, mask)

    def _init_identity(self) -> None:
        """Identity (Dirac) 3x3 convs: a linear probe of the FPN features at step 0.

        Measured (linear probe on Imagenette val, 320 px, untrained neck/head): the
        GAP of the head's hidden features classifies 90 % with Dirac init and no
        normalisation, 55-57 % with random init (GroupNorm or none)."""
        for layer in [self.neck.output, *list(self.head)[:-1]]:
            conv = (layer.layer if isinstance(layer, (Residual, Carry)) else layer)[0]
            nn.init.dirac_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def _init_output_bias(self) -> None:
        """Small output weights, zero biases, then each task's own bias start (detection's
        focal-loss prior)."""
        last: nn.Conv2d = self.head[-1]
        nn.init.normal_(last.weight, std=0.01)
        nn.init.zeros_(last.bias)
        if isinstance(last, RowMaskedConv):
            with torch.no_grad():
                last.weight.mul_(last.read_mask)  # what a row never reads stays exactly 0
        for t, channels in self.output_slices().items():
            if TASKS[t].init_output_bias is not None:
                TASKS[t].init_output_bias(last.bias[channels], self.cfg.num_classes[t])

    def output_slices(self) -> dict[str, slice]:
        """Which channels of the last head layer belong to which task."""
        out, start = {}, 0
        for t, n in zip(self.task_order, self.splits):
            out[t] = slice(start, start + n)
            start += n
        return out

    def train(self, mode: bool = True) -> "OneHeadNet":
        super().train(mode)
        if mode and getattr(self, "frozen_backbone", False):
            self.backbone.eval()  # a frozen backbone computes exactly what the feature cache holds
        elif mode and self.cfg.freeze_backbone_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def backbone_features(self, x: Tensor | BackboneFeatures) -> list[Tensor]:
        """The backbone's feature maps of images, or the cached maps themselves (channels-last;
        with :attr:`live_tail`, the deepest one recomputed by the model's last stage)."""
        if isinstance(x, BackboneFeatures):
            maps = [m.contiguous(memory_format=torch.channels_last) for m in x.maps]
            if self.live_tail:
                y = maps[-2]
                for _, stage in self.last_stage():
                    y = stage(y)
                maps[-1] = y
            return maps
        return self.backbone(x.contiguous(memory_format=torch.channels_last))

    @functools.cached_property
    def last_stage_names(self) -> tuple[str, ...]:
        """The names, in the backbone, of the modules that turn its second-deepest map into the
        deepest one (the stage plans' part ``tail``: ``blocks.5``, ``blocks.6`` of Lite0).  Found
        once, when first asked: a backbone whose last stage cannot be split off fails only then."""
        return tuple(name for name, _ in last_stage(self.backbone))

    def last_stage(self) -> list[tuple[str, nn.Module]]:
        """Those modules, in order, with their names."""
        return [(name, self.backbone.get_submodule(name)) for name in self.last_stage_names]

    def forward(self, x: Tensor | BackboneFeatures) -> OneHeadOutput:
        """Images, or the backbone's cached feature maps of them (``feature_cache``)."""
        feats = self.backbone_features(x)
        if self.reads_semantic_in_output_only():
            neck = self.neck(feats, semantic=False)
            y = self.head[-1].first_inputs(self._hidden_without_carried(neck))
            if not self.semantic_idle():
                y = y + self.semantic_share(feats[-1], y.shape[-2:])
        else:
            neck = self.neck(feats)
            y = self.head(neck)
        out = OneHeadOutput()
        for t, part in zip(self.task_order, torch.split(y, self.splits, dim=1)):
            if self.only_outputs is not None and t not in self.only_outputs:
                continue
            reduce = TASKS[t].reduce
            out[t] = reduce(part, self.pool) if reduce else part
        # the neck's trained channels: what feature distillation and the anchor hold (the fixed
        # semantic channels are the same for every model of a run, and absent from lean passes)
        out.features = neck[:, : self.cfg.neck_channels]
        return out

    def semantic_idle(self) -> bool:
        """True when the semantic channels reach none of the outputs a pass returns (only
        ``semantic_readers`` read them, and none of those is among ``only_outputs``)."""
        readers = self.cfg.semantic_readers
        return (readers is not None and self.neck.semantic_channels > 0 and self.only_outputs is not None
                and not set(readers) & set(self.only_outputs))

    def reads_semantic_in_output_only(self) -> bool:
        """True when the semantic channels reach the output layer alone (``semantic_readers`` is
        set, so the hidden convs read only the trained channels).  No pass then builds them at
        the neck's stride: :meth:`semantic_share` adds what they contribute to the output layer."""
        return self.cfg.semantic_readers is not None and self.neck.semantic_channels > 0

    def semantic_share(self, deepest: Tensor, size: Sequence[int]) -> Tensor:
        """What the semantic channels add to the output layer's map of size ``size`` (h, w),
        computed at the deepest map's stride: the fixed projection and the output conv's columns
        for those channels are both 1x1 and linear, and nearest upsampling commutes with a 1x1
        conv, so ``conv(up(P x)) = up((W P) x)`` exactly, up to float rounding.  At 512 px that is
        a 46-channel 16 x 16 map upsampled, instead of 320 channels built at 64 x 64."""
        k = self.neck.semantic_channels
        columns = self.head[-1].masked_weight()[:, -k:, 0, 0]  # (outputs, k); closed rows are 0
        weight = (columns @ self.neck.semantic_projection.flatten(1).to(columns.dtype))[:, :, None, None]
        return F.interpolate(F.conv2d(deepest, weight.to(deepest.dtype)), size=tuple(size), mode="nearest")

    def _hidden_without_carried(self, neck: Tensor) -> Tensor:
        """The hidden head layers' own channels from the neck's trained channels (a model whose
        hidden convs do not read the semantic channels)."""
        y = neck
        for layer in self.head[:-1]:
            y = layer.without_carried(y)
        return y

    @torch.no_grad()
    def global_averages(self, x: Tensor | BackboneFeatures) -> dict[str, Tensor]:
        """Global averages (B, channels) of the backbone's deepest map (``backbone``), the neck's
        output (``neck``), the last hidden layer's output, i.e. the output layer's input
        (``head``), and the semantic channels if any (``semantic``; in ``neck`` and ``head``
        they are the last channels): what the linear probes and the logistic read-out fit on."""
        feats = self.backbone_features(x)
        out = {"backbone": feats[-1].mean((2, 3))}
        neck = self.neck(feats)  # the semantic channels built: probing is not on a hot path
        out["neck"], out["head"] = neck.mean((2, 3)), self.head[:-1](neck).mean((2, 3))
        if self.neck.semantic_channels:
            out["semantic"] = out["neck"][:, -self.neck.semantic_channels:]
        return out

    @contextmanager
    def producing(self, tasks: Sequence[str] | None) -> Iterator[OneHeadNet]:
        """Within: forward passes return only ``tasks``' outputs (None: every task's), and skip the
        fixed semantic channels when none of ``tasks`` reads them.  A training stage passes the
        tasks it trains or holds: in the segmentation and detection stages of a model whose
        semantic channels only classification reads, a neck + head step then computes what it
        needs and no more (the same outputs up to float rounding; with 320 semantic channels a
        neck + head step measured 1.4x cheaper than the full pass at batch 8, 512 px, and a model
        without them 1.75x cheaper than one with).  A copy made within (the distillation teacher)
        keeps the setting."""
        saved = self.only_outputs
        self.only_outputs = None if tasks is None else tuple(tasks)
        try:
            yield self
        finally:
            self.only_outputs = saved

    @torch.no_grad()
    def for_inference(self) -> OneHeadNet:
        """An eval-mode copy for prediction only, with every BatchNorm that follows a conv
        folded into that conv.  In eval mode a BatchNorm is a fixed per-channel affine map,
        yet on CPU it costs a full pass over the activations: folding it makes the Lite0
        backbone about 1.6x faster at 512 x 512 (measured), with the same outputs up to float
        rounding.  The copy is checked against the original on a small random image; if a
        backbone's layout defeats the folding, the unfolded copy is returned, with a warning."""
        fused = copy.deepcopy(self).eval()
        folded = fold_batchnorm(fused)
        fused.to(memory_format=torch.channels_last)
        probe = torch.randn(1, 3, 64, 64, device=next(self.parameters()).device)
        was_training = self.training
        self.eval()
        want, got = self(probe), fused(probe)
        self.train(was_training)
        if folded and not all(torch.allclose(want[t], got[t], rtol=1e-3, atol=1e-3) for t in want):
            warnings.warn(f"folding BatchNorm changed the outputs of backbone {self.cfg.backbone}; "
                          "predicting with the unfolded model", stacklevel=2)
            return copy.deepcopy(self).eval()
        return fused

    @torch.no_grad()
    def predict(self, images: Tensor, original_sizes: Sequence[tuple[int, int]] | None = None,
                tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per image: ``{"det": Detections (xyxy, ORIGINAL pixels), "seg": (H, W) class ids at
        the original size, "cls": class probabilities}``.  ``original_sizes`` are (h, w)."""
        return decode_batch(self(images), images.shape[-2:], images.shape[0], original_sizes, self.task_settings,
                            tasks or self.task_order)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each BatchNorm into the conv registered just before it in the same parent (how
    timm and ``conv_norm_relu`` lay out conv -> norm), in place; returns how many were
    folded.  A norm with a built-in activation (timm's ``BatchNormAct2d``) leaves that
    activation behind.  Eval-mode statistics only: for inference copies, never training."""
    count = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for conv_name, norm_name in itertools.pairwise(names):
            conv, norm = parent._modules[conv_name], parent._modules[norm_name]
            if not (type(conv) is nn.Conv2d and isinstance(norm, nn.BatchNorm2d)
                    and norm.track_running_stats and conv.out_channels == norm.num_features):
                continue
            parent._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
            rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if m is not None]
            parent._modules[norm_name] = nn.Sequential(*rest) if rest else nn.Identity()
            count += 1
    return count


def create_model(backbone: str = LITE0, pretrained: bool = True, **kwargs: Any) -> OneHeadNet:
    """Build the one-head network: ``create_model("mobilenetv3_small_100", head_channels=64)``."""
    return OneHeadNet(ModelConfig(backbone=backbone, pretrained=pretrained, **kwargs))


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Weights per part; the neck's fixed semantic projection counts, trained or not."""
    fixed = getattr(model.neck, "semantic_projection", None)
    fixed = 0 if fixed is None else fixed.numel()
    parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("backbone", "neck", "head")}
    parts["neck"] += fixed
    parts["total"] = sum(p.numel() for p in model.parameters()) + fixed
    return parts
