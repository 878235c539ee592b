"""The challenge's rules and the project's own, stricter bars: every limit a check, a figure, a
summary or the report compares against is written here once.

The challenge ("Unified-OneHead Multi-Task Challenge") fixes the model's shape, the replay budget,
the forgetting bar and a budget on a Colab T4.  The project holds itself to tighter numbers on
this 2-core CPU (DESIGN.md, quality bars).  Code reads these names at the moment it checks
(``rules.DROP_BAR_PCT``, not a copy taken at import), so a changed rule reaches every check.
"""
from __future__ import annotations

# --- the challenge ------------------------------------------------------------------------------
PARAM_LIMIT = 8_000_000  # the whole model must have fewer parameters than this
HEAD_LAYERS = (2, 3)  # the single-branch head has 2 or 3 layers, the last one emits every output
NECK_MAX_FPN_LAYERS = 1  # the neck is at most one FPN layer (one output conv after the top-down sum)
MAX_REPLAY_PER_TASK_PER_STEP = 10  # replayed images per earlier task in one training step
DROP_BAR_PCT = 5.0  # each task's final metric may fall at most this far (%) below its own baseline
CHALLENGE_LATENCY_MS = 150.0  # per 512 x 512 image, with post-processing, on a Colab T4
CHALLENGE_TRAIN_MIN = 120.0  # the whole sequential training on a Colab T4

# --- the project's own bars (this 2-core CPU) ----------------------------------------------------
PROJECT_PARAM_LIMIT = 5_000_000  # at most this many parameters (the challenge allows < 8 M)
LATENCY_BAR_MS = 20.0  # median per 512 x 512 image, batch 1, with post-processing
TRAIN_BUDGET_MIN = 45.0  # the default recipe's full training, feature cache included


def head_layers_allowed(layers: int) -> bool:
    """A head of ``layers`` layers keeps the challenge's 2-3 layer rule."""
    low, high = HEAD_LAYERS
    return low <= layers <= high


def neck_allowed(fpn_layers: int) -> bool:
    """A neck of ``fpn_layers`` FPN layers (output convs after the top-down sum) keeps the rule."""
    return 1 <= fpn_layers <= NECK_MAX_FPN_LAYERS


def params_allowed(total: int) -> bool:
    """The challenge's limit: strictly fewer than ``PARAM_LIMIT`` parameters."""
    return total < PARAM_LIMIT


def params_within_project_limit(total: int) -> bool:
    """The project's own, stricter parameter bar."""
    return total <= PROJECT_PARAM_LIMIT


def latency_within_bar(median_ms: float) -> bool:
    """A median latency (512 x 512, batch 1, post-processing included, this CPU) keeps the
    project's bar.  The challenge's 150 ms is on a Colab T4, which this machine cannot measure."""
    return median_ms <= LATENCY_BAR_MS


def within_drop_bar(drop_pct: float) -> bool:
    """A task's relative drop keeps the challenge's forgetting bar."""
    return drop_pct <= DROP_BAR_PCT


def check_replay_per_step(per_step: int) -> None:
    """Replay of ``per_step`` images per earlier task in each step: at least one, at most the cap."""
    if not 1 <= per_step <= MAX_REPLAY_PER_TASK_PER_STEP:
        raise ValueError(f"replay per_step={per_step}: the challenge allows 1..{MAX_REPLAY_PER_TASK_PER_STEP} "
                         "replayed images per earlier task per step")
