"""The ``ppo`` estimator: proximal policy optimisation of the Bernoulli keep-probabilities.

The paper leaves "more powerful policy gradient algorithms" (Schulman et al. 2017) as future
work (Sect. 6); this is that experiment.  One step:

1. sample ``n_samples`` (M) masks from the current probabilities ``s_old``;
2. evaluate their losses once, forward only (``oracle.losses``: the model is never
   back-propagated, exactly like ``reinforce``);
3. advantages ``A_m = -(L(m) - b) / std``: loss minus the shared baseline
   (:mod:`pgprune_core.optim.baselines`), divided by the standard deviation of the step's
   advantages, with the sign of a reward (reward = -loss).  The normalisation makes the
   step size independent of the loss scale, so ``lr`` means the same on every model;
4. ``epochs`` (K) updates of ``s`` ascending the clipped surrogate
   (:class:`~pgprune_ppo.surrogate.ClippedSurrogate`, per-unit ratios), each one a projected
   SGD step ``s <- proj_C(s + lr_t * ∇J(s))``, so every iterate is feasible.

The K updates reuse the same M losses: they cost a few vector operations on ``s`` each,
nothing on the model.  The first update is a REINFORCE step with normalised advantages;
the later ones go further where the samples still support it and stop, unit by unit, where
the ratio leaves the clip range.
"""

from __future__ import annotations

import torch
from pydantic import Field

from pgprune_core import StepContext
from pgprune_core.optim.baselines import BaselineKind
from pgprune_core.optim.sampled import SampledLossEstimator, Samples
from pgprune_core.optim.step_size import StepSizeConfig, projected_step

from .surrogate import ClippedSurrogate

#: below this spread of the advantages a step carries no usable signal (identical losses)
_MIN_STD = 1e-12


class PpoEstimator(SampledLossEstimator):
    """PPO (clipped surrogate, per-unit ratios) on the Bernoulli policy; forward passes only."""

    name = "ppo"

    class Config(StepSizeConfig):
        #: base learning rate per update, in units of normalised advantage (see README)
        lr: float = Field(default=3e-5, gt=0)
        #: masks sampled per step (M); each costs one forward pass of the batch
        n_samples: int = Field(default=4, ge=2)
        #: updates of s per step on the same samples (K)
        epochs: int = Field(default=4, ge=1)
        #: clip range eps: per-unit ratios are held to [1 - eps, 1 + eps]
        clip: float = Field(default=0.2, gt=0, lt=1)
        #: moving-average (Eq. 8), none, or leave-one-out
        baseline: BaselineKind = "moving-average"
        #: moving-average window (T of Eq. 8)
        window: int = Field(default=5, ge=1)

    config: Config
    skip_extra = ("clip_fraction", "update_abs_mean")

    def update(self, ctx: StepContext, samples: Samples, advantages: torch.Tensor,
               lr: float | None) -> dict[str, float]:
        assert lr is not None
        policy = ctx.policy
        free = ~policy.fixed
        surrogate = ClippedSurrogate(
            masks=samples.masks.to(device="cpu", dtype=torch.float64)[:, free],
            advantages=self.normalised_rewards(advantages),
            old=policy.probs[free],
            clip=self.config.clip,
        )
        moved = 0.0
        for _ in range(self.config.epochs):
            ascent = torch.zeros(len(policy), dtype=torch.float64)
            ascent[free] = surrogate.gradient(policy.probs[free])
            moved += projected_step(policy, ctx.project, -lr * ascent)
        final = policy.probs[free]
        return {
            # share of (mask, unit) terms the clip had switched off after the last update
            "clip_fraction": float(surrogate.clipped(final).double().mean()),
            "update_abs_mean": moved,
        }

    @staticmethod
    def normalised_rewards(advantages: torch.Tensor) -> torch.Tensor:
        """``-(L - b) / std(L - b)`` (float64 [M]); zeros when the losses do not differ,
        since then the samples say nothing about which units matter."""
        std = float(advantages.std())
        if not std > _MIN_STD:
            return torch.zeros_like(advantages)
        return -advantages / std
