"""The ``reinforce`` estimator: the paper's policy-gradient step (Eqs. 7 and 8).

One step samples ``N_s`` masks from the policy, asks the oracle for their losses (forward
passes only), and moves the probabilities against

    g = 1/D * sum_i (L(m_i) - b_i) * score(m_i),     D = N_s ("mean") or N_s - 1 ("unbiased")

before projecting back onto the budget: ``s <- proj_C(s - lr_t * g)``.  The baseline
``b_i`` is the moving average of Eq. 8 by default (:mod:`pgprune_core.optim.baselines`: started
at the first step's mean loss and updated before use, as the authors' code does).

The learning rate the paper gives (2e-3) belongs to its ~15,000-step runs; by default it is
scaled to the run's length (``scale_lr_to_steps``, see :mod:`pgprune_core.optim.step_size` and
the README) so that short runs still move the probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from pgprune_core import StepContext
from pgprune_core.optim.baselines import BaselineKind, RunningScale
from pgprune_core.optim.policy import BernoulliPolicy, ScoreVariant
from pgprune_core.optim.sampled import SampledLossEstimator, Samples
from pgprune_core.optim.step_size import StepSizeConfig, effective_lr, projected_step

#: the options each preset sets (options given explicitly win over the preset's): ``paper``
#: is the paper's method exactly (Eqs. 7-8, its learning rate unscaled), ``authors`` the
#: authors' public code; ``pgprune`` is the field defaults below, the best combination
#: measured (docs/benchmarks.md, "The estimator's defaults")
PAPER: dict[str, Any] = {
    "lr": 2e-3, "scale_lr_to_steps": False, "schedule": "cosine", "n_samples": 2, "window": 5,
    "baseline": "moving-average", "score": "exact", "normalize": "mean", "advantage_scale": "none",
}
PRESETS: dict[str, dict[str, Any]] = {
    "pgprune": {},
    "paper": PAPER,
    "authors": {**PAPER, "score": "sqrt", "normalize": "unbiased"},
}


class ReinforceEstimator(SampledLossEstimator):
    """REINFORCE with a moving-average baseline, projected onto the budget (paper Eqs. 7-8)."""

    name = "reinforce"

    class Config(StepSizeConfig):
        #: pgprune: the measured best defaults; paper: the paper's method exactly; authors:
        #: the authors' code (sqrt score, N_s - 1); options given explicitly win
        preset: Literal["pgprune", "paper", "authors"] = "pgprune"
        #: masks sampled per step (N_s; paper: 2)
        n_samples: int = Field(default=2, ge=1)
        #: moving-average window (T of Eq. 8; paper: 5)
        window: int = Field(default=5, ge=1)
        #: moving-average (Eq. 8), none (ablation, Table A8), leave-one-out (the mean loss
        #: of the other samples of the same step)
        baseline: BaselineKind = "moving-average"
        #: exact: (m - s) / (s (1 - s)) (paper); sqrt: (m - s) / sqrt(s (1 - s)) (authors' code)
        score: ScoreVariant = "exact"
        #: mean: divide by N_s (paper); unbiased: by N_s - 1 (authors' code)
        normalize: Literal["mean", "unbiased"] = "mean"
        #: none: the advantages as they are (paper); rms: divided by their running
        #: root-mean-square over `scale_window` steps, so the step no longer depends on the
        #: loss's scale
        advantage_scale: Literal["none", "rms"] = "none"
        #: steps of the running RMS of `advantage_scale: rms`
        scale_window: int = Field(default=50, ge=1)

        @model_validator(mode="before")
        @classmethod
        def _apply_preset(cls, data: Any) -> Any:
            if isinstance(data, Mapping) and data.get("preset", "pgprune") in PRESETS:
                return {**PRESETS[data.get("preset", "pgprune")], **data}
            return data

        @model_validator(mode="after")
        def _two_samples(self) -> ReinforceEstimator.Config:
            if self.n_samples < 2 and self.baseline == "leave-one-out":
                raise ValueError("baseline 'leave-one-out' needs n_samples >= 2")
            if self.n_samples < 2 and self.normalize == "unbiased":
                raise ValueError("normalize 'unbiased' divides by n_samples - 1; use n_samples >= 2")
            return self

    config: Config
    skip_extra = ("grad_norm", "update_abs_mean")

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self._scale = RunningScale(self.config.scale_window)

    def start(self, policy: BernoulliPolicy, total_steps: int) -> None:
        super().start(policy, total_steps)
        self._scale.reset()

    def update(self, ctx: StepContext, samples: Samples, advantages: torch.Tensor,
               lr: float | None) -> dict[str, float]:
        assert lr is not None
        if self.config.advantage_scale == "rms":
            advantages = self._scale.scale(advantages)
        grad = self.gradient(ctx.policy, samples.masks, advantages)
        moved = projected_step(ctx.policy, ctx.project, lr * grad)
        # how far the probabilities moved: the number that tells a too-small lr
        return {"grad_norm": float(grad.norm()), "update_abs_mean": moved}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.config.advantage_scale == "rms":
            state.update(self._scale.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._scale.load_state_dict(state)

    # -- the pieces of Eq. 7 ------------------------------------------------------------
    def effective_lr(self, step: int, total_steps: int, run_steps: int | None = None) -> float:
        """The learning rate of step ``step`` of ``total_steps`` (see
        :func:`pgprune_core.optim.step_size.effective_lr`)."""
        return effective_lr(self.config, step, total_steps, run_steps)

    def advantages(self, losses: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """``L(m_i) - b_i`` (float64 [N_s]) and the shared baseline, if there is one.
        Advances the moving average (Eq. 8) as a side effect."""
        assert self._baseline is not None
        return self._baseline.advantages(losses)

    def gradient(
        self, policy: BernoulliPolicy, masks: torch.Tensor, advantages: torch.Tensor
    ) -> torch.Tensor:
        """float64 [n]: the bracket of Eq. 7, ``1/D * sum_i advantage_i * score(m_i)``."""
        divisor = masks.shape[0] - 1 if self.config.normalize == "unbiased" else masks.shape[0]
        return advantages @ policy.score(masks, self.config.score) / divisor
