"""The optimisation: Bernoulli keep-probabilities (``policy``), budgets and their projection
(``budget``, ``projection``), baselines, step sizes and schedules, the skipping of
non-finite steps, the shared skeleton of sampled-loss estimators (``sampled``), the loop
and its checkpoints.  Estimator plugins build on this package.

The names in ``__all__`` are the stable API for plugin authors (see docs/plugins.md); the
rest of the submodules (the loop, checkpoints, budgets) is internal and may change.
"""

from __future__ import annotations

from pgprune_core.optim.baselines import BASELINE_KINDS, BaselineKind, LossBaseline
from pgprune_core.optim.policy import BernoulliPolicy, ScoreVariant
from pgprune_core.optim.sampled import SampledLossEstimator, Samples
from pgprune_core.optim.schedules import ScheduleKind, learning_rate, steps_scaled_lr
from pgprune_core.optim.skips import NonFiniteSkips
from pgprune_core.optim.step_size import StepSizeConfig, effective_lr, projected_step

__all__ = [
    "BASELINE_KINDS",
    "BaselineKind",
    "BernoulliPolicy",
    "LossBaseline",
    "NonFiniteSkips",
    "SampledLossEstimator",
    "Samples",
    "ScheduleKind",
    "ScoreVariant",
    "StepSizeConfig",
    "effective_lr",
    "learning_rate",
    "projected_step",
    "steps_scaled_lr",
]
