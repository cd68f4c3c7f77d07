"""The shared skeleton of sampled-loss estimators.

``reinforce``, ``ppo`` and ``gumbel`` all take a step the same way:

1. sample ``n_samples`` masks from the policy (:meth:`SampledLossEstimator.draw`; ``gumbel``
   draws relaxed masks and evaluates them with autograd on);
2. ask the oracle for their losses, one per mask (:class:`~pgprune_core.interfaces.LossOracle`);
3. check the shape ([n_samples]) and, when a loss is not finite, skip the step
   (:mod:`pgprune_core.optim.skips`): nothing moves, the stats say ``skipped``;
4. turn the losses into advantages with the configured baseline
   (:mod:`pgprune_core.optim.baselines`), for estimators that use one;
5. let the estimator move the policy (:meth:`SampledLossEstimator.update`: its gradient,
   surrogate or relaxation, the only part that differs);
6. report ``loss``, ``baseline``, ``lr``, the estimator's own numbers and ``skipped_total``.

The checkpointed state is the baseline's ``{"baseline": [...]}`` (when there is one) and
``{"skipped": count}``: the keys every estimator wrote before this skeleton existed, so old
checkpoints resume unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pgprune_core.config.base import PluginConfig
from pgprune_core.interfaces import Estimator, StepContext, StepStats
from pgprune_core.optim.baselines import LossBaseline
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.optim.skips import NonFiniteSkips
from pgprune_core.optim.step_size import StepSizeConfig, effective_lr

__all__ = ["SampledLossEstimator", "Samples"]


@dataclass
class Samples:
    """One step's masks and their losses, as :meth:`SampledLossEstimator.draw` made them."""

    #: [n_samples, n]: the masks the oracle evaluated
    masks: torch.Tensor
    #: [n_samples] (any float dtype and device, possibly part of an autograd graph)
    losses: torch.Tensor
    #: whatever else :meth:`SampledLossEstimator.update` needs (``gumbel``: the leaf tensor)
    aux: Any = None


class SampledLossEstimator(Estimator):
    """Base of estimators that learn from the losses of masks sampled each step.

    A subclass declares a ``Config`` with ``n_samples`` (and ``baseline`` / ``window`` when
    :attr:`uses_baseline`; the step-size options of
    :class:`~pgprune_core.optim.step_size.StepSizeConfig` for an ``lr``) and implements
    :meth:`update`.  It may override :meth:`draw` (how masks are sampled and evaluated) and
    :meth:`step_extra` (numbers that depend on the step only, reported even on skipped steps).
    """

    #: subtract a baseline from the losses (``Config.baseline`` and ``Config.window``)
    uses_baseline: ClassVar[bool] = True
    #: ``extra`` keys :meth:`update` reports, written as 0.0 on a skipped step (NaN would
    #: not survive strict JSON)
    skip_extra: ClassVar[tuple[str, ...]] = ("update_abs_mean",)

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        cfg: Any = self.config
        self._baseline: LossBaseline | None = (
            LossBaseline(cfg.baseline, cfg.window) if self.uses_baseline else None
        )
        self._skips = NonFiniteSkips(self.name)

    @property
    def n_samples(self) -> int:
        """Masks sampled (and evaluated) per step."""
        return int(self.config.n_samples)  # type: ignore[attr-defined]

    @property
    def skipped(self) -> int:
        """Steps skipped so far for non-finite losses (all stages together)."""
        return self._skips.count

    # -- the run ------------------------------------------------------------------------
    def start(self, policy: BernoulliPolicy, total_steps: int) -> None:
        """Forget the baseline (a new stage starts at another loss level).  The skip
        counter runs over the estimator's whole life, all stages together."""
        if self._baseline is not None:
            self._baseline.reset()

    def lr(self, ctx: StepContext) -> float | None:
        """The learning rate of this step (None when the Config has no step-size options)."""
        if not isinstance(self.config, StepSizeConfig):
            return None
        return effective_lr(self.config, ctx.step, ctx.total_steps, ctx.run_steps)

    def draw(self, ctx: StepContext) -> Samples:
        """Sample :attr:`n_samples` hard masks and evaluate them, forward only."""
        masks = ctx.policy.sample(self.n_samples, ctx.generator)
        return Samples(masks, torch.as_tensor(ctx.oracle.losses(ctx.batch, masks)).detach())

    def step_extra(self, ctx: StepContext) -> dict[str, float]:
        """Numbers of this step that do not depend on the samples (``gumbel``: ``tau``)."""
        return {}

    @abc.abstractmethod
    def update(self, ctx: StepContext, samples: Samples, advantages: torch.Tensor,
               lr: float | None) -> dict[str, float]:
        """Move ``ctx.policy`` (in place, through ``ctx.project``) and return the step's
        own numbers for ``StepStats.extra``.  ``advantages`` is float64 [n_samples] on the
        CPU: the losses minus the baseline, or the losses themselves without one."""

    def step(self, ctx: StepContext) -> StepStats:
        lr = self.lr(ctx)
        pre = self.step_extra(ctx)
        samples = self.draw(ctx)
        losses = samples.losses.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if losses.numel() != self.n_samples:
            raise RuntimeError(
                f"the oracle returned {losses.numel()} losses for {self.n_samples} masks"
            )
        mean_loss = float(losses.mean())
        head = {} if lr is None else {"lr": lr}
        if not self._skips.finite(losses, ctx.step):
            # nothing was applied: report a zero update
            return StepStats(
                loss=mean_loss,
                baseline=None if self._baseline is None else self._baseline.value,
                skipped=True,
                extra={**head, **pre, **dict.fromkeys(self.skip_extra, 0.0),
                       "skipped_total": float(self._skips.count)},
            )
        if self._baseline is None:
            advantages, baseline = losses, None
        else:
            advantages, baseline = self._baseline.advantages(losses)
        extra = self.update(ctx, samples, advantages, lr)
        return StepStats(
            loss=mean_loss,
            baseline=baseline,
            extra={**head, **pre, **extra, "skipped_total": float(self._skips.count)},
        )

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        base = {} if self._baseline is None else self._baseline.state_dict()
        return {**base, "skipped": self._skips.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._baseline is not None:
            self._baseline.load_state_dict(state)
        self._skips.count = int(state["skipped"])

