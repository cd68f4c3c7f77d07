"""The ``reinforce`` estimator: the paper's policy-gradient step (Eqs. 7 and 8).

One step samples ``N_s`` masks from the policy, asks the oracle for their losses (forward
passes only), and moves the probabilities against

    g = 1/D * sum_i (L(m_i) - b_i) * score(m_i),     D = N_s ("mean") or N_s - 1 ("unbiased")

before projecting back onto the budget: ``s <- proj_C(s - lr_t * g)``.  The baseline
``b_i`` is the moving average of Eq. 8 by default, updated *before* use and started at the
first step's mean loss, exactly as the authors' code does (the paper's Algorithm 1 starts
it at 0, which makes the first steps' advantages the raw losses, a large and useless
push on every sampled unit).  Updating before use lets the current losses enter the
baseline with weight 1/(N_s T), a small bias that the authors accept and we keep.

The learning rate the paper gives (2e-3) belongs to its ~15,000-step runs; by default it is
scaled to the run's length (``scale_lr_to_steps``, see :func:`pgprune_core.schedules.
steps_scaled_lr` and the README) so that short runs still move the probabilities.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from pgprune_core import Estimator, PluginConfig, StepContext, StepStats
from pgprune_core.policy import BernoulliPolicy, ScoreVariant
from pgprune_core.schedules import ScheduleKind, learning_rate, steps_scaled_lr


class ReinforceEstimator(Estimator):
    """REINFORCE with a moving-average baseline, projected onto the budget (paper Eqs. 7-8)."""

    name = "reinforce"

    class Config(PluginConfig):
        name: Literal["reinforce"] = "reinforce"
        #: masks sampled per step (N_s; paper: 2)
        n_samples: int = Field(default=2, ge=1)
        #: moving-average window (T of Eq. 8; paper: 5)
        window: int = Field(default=5, ge=1)
        #: base learning rate (paper: 2e-3 for LLaMA-2, 6e-3 for LLaMA-3, at ~15k steps)
        lr: float = Field(default=2e-3, gt=0)
        #: the run length that `lr` was chosen for
        lr_reference_steps: int = Field(default=15000, gt=0)
        #: multiply `lr` by max(1, lr_reference_steps / total_steps), at most lr_max_scale
        scale_lr_to_steps: bool = True
        #: the largest factor of that rule (15: 3e-2 = 15 x 2e-3 is the largest rate
        #: measured to work, at 1,500 steps on the proxy model)
        lr_max_scale: float = Field(default=15.0, ge=1.0)
        #: learning-rate schedule over the run (authors: cosine)
        schedule: ScheduleKind = "cosine"
        #: moving-average (Eq. 8), none (ablation, Table A8), leave-one-out (the mean loss
        #: of the other samples of the same step)
        baseline: Literal["moving-average", "none", "leave-one-out"] = "moving-average"
        #: exact: (m - s) / (s (1 - s)) (paper); sqrt: (m - s) / sqrt(s (1 - s)) (authors' code)
        score: ScoreVariant = "exact"
        #: mean: divide by N_s (paper); unbiased: by N_s - 1 (authors' code)
        normalize: Literal["mean", "unbiased"] = "mean"

        @model_validator(mode="after")
        def _two_samples(self) -> ReinforceEstimator.Config:
            if self.n_samples < 2 and self.baseline == "leave-one-out":
                raise ValueError("baseline 'leave-one-out' needs n_samples >= 2")
            if self.n_samples < 2 and self.normalize == "unbiased":
                raise ValueError("normalize 'unbiased' divides by n_samples - 1; use n_samples >= 2")
            return self

    config: Config

    def __init__(self, config: Config | None = None) -> None:
        super().__init__(config)
        self._baseline: float | None = None
        self._skipped = 0

    # -- the run ------------------------------------------------------------------------
    def start(self, policy: BernoulliPolicy, total_steps: int) -> None:
        """Forget the baseline (a new stage starts at another loss level).  The skip
        counter runs over the estimator's whole life, all stages together."""
        self._baseline = None

    def step(self, ctx: StepContext) -> StepStats:
        cfg = self.config
        policy = ctx.policy
        masks = policy.sample(cfg.n_samples, ctx.generator)
        losses = torch.as_tensor(ctx.oracle.losses(ctx.batch, masks)).detach()
        losses = losses.to(device="cpu", dtype=torch.float64).reshape(-1)
        if losses.numel() != cfg.n_samples:
            raise RuntimeError(f"the oracle returned {losses.numel()} losses for {cfg.n_samples} masks")
        lr = self.effective_lr(ctx.step, ctx.total_steps, ctx.run_steps)
        mean_loss = float(losses.mean())
        if not bool(torch.isfinite(losses).all()):
            self._skipped += 1
            warnings.warn(
                f"reinforce: non-finite loss {losses.tolist()} at step {ctx.step}; step skipped "
                f"({self._skipped} so far)",
                RuntimeWarning,
                stacklevel=2,
            )
            # nothing was applied: report a zero update (NaN would not survive strict JSON)
            return StepStats(
                loss=mean_loss,
                baseline=self._baseline,
                skipped=True,
                extra={"lr": lr, "grad_norm": 0.0, "skipped_total": float(self._skipped),
                       "update_abs_mean": 0.0},
            )
        advantages, baseline = self.advantages(losses)
        grad = self.gradient(policy, masks, advantages)
        before = policy.probs
        policy.probs = ctx.project(before - lr * grad)
        return StepStats(
            loss=mean_loss,
            baseline=baseline,
            extra={
                "lr": lr,
                "grad_norm": float(grad.norm()),
                "skipped_total": float(self._skipped),
                # how far the probabilities moved: the number that tells a too-small lr
                "update_abs_mean": float((policy.probs - before).abs().mean()),
            },
        )

    # -- the pieces of Eq. 7 ------------------------------------------------------------
    def effective_lr(self, step: int, total_steps: int, run_steps: int | None = None) -> float:
        """The learning rate of step ``step`` of ``total_steps``: ``lr``, scaled to the run
        length ``run_steps`` (default ``total_steps``; see ``StepContext.reference_steps``)
        when ``scale_lr_to_steps`` (by at most ``lr_max_scale``), then shaped by the schedule."""
        cfg = self.config
        base = cfg.lr
        if cfg.scale_lr_to_steps:
            base = steps_scaled_lr(cfg.lr, run_steps or total_steps, cfg.lr_reference_steps,
                                   cfg.lr_max_scale)
        return learning_rate(base, step, total_steps, cfg.schedule)

    def advantages(self, losses: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """``L(m_i) - b_i`` (float64 [N_s]) and the shared baseline, if there is one.
        Advances the moving average (Eq. 8) as a side effect."""
        cfg = self.config
        if cfg.baseline == "none":
            return losses, None
        if cfg.baseline == "leave-one-out":
            others = (losses.sum() - losses) / (losses.numel() - 1)
            return losses - others, None
        window, total = cfg.window, float(losses.sum())
        if self._baseline is None:
            self._baseline = total / losses.numel()
        self._baseline = (window - 1) / window * self._baseline + total / (losses.numel() * window)
        return losses - self._baseline, self._baseline

    def gradient(
        self, policy: BernoulliPolicy, masks: torch.Tensor, advantages: torch.Tensor
    ) -> torch.Tensor:
        """float64 [n]: the bracket of Eq. 7, ``1/D * sum_i advantage_i * score(m_i)``."""
        divisor = masks.shape[0] - 1 if self.config.normalize == "unbiased" else masks.shape[0]
        return advantages @ policy.score(masks, self.config.score) / divisor

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": [] if self._baseline is None else [self._baseline],
            "skipped": self._skipped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        baseline = list(state["baseline"])
        self._baseline = float(baseline[0]) if baseline else None
        self._skipped = int(state["skipped"])
