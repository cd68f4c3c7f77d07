"""The step-size options every gradient-step estimator shares, and the projected step.

``reinforce``, ``gumbel`` and ``ppo`` all move the probabilities by plain SGD,
``s <- proj_C(s - lr_t * g)``, with the learning rate of :mod:`pgprune_core.optim.schedules`:
a base rate chosen for a run of ``lr_reference_steps`` steps, raised for shorter runs by
:func:`~pgprune_core.optim.schedules.steps_scaled_lr` (at most ``lr_max_scale``), then shaped by
the schedule.  Declaring the options once (:class:`StepSizeConfig`) keeps their names,
defaults and meaning identical across estimators, which a fair comparison needs; each
estimator may redeclare ``lr`` with its own default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field

from pgprune_core.config.base import PluginConfig
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.optim.schedules import ScheduleKind, learning_rate, steps_scaled_lr


class StepSizeConfig(PluginConfig):
    """Options of the SGD step on the probabilities (base of estimator ``Config`` s)."""

    #: base learning rate (paper: 2e-3 for LLaMA-2, 6e-3 for LLaMA-3, at ~15k steps)
    lr: float = Field(default=2e-3, gt=0)
    #: the run length that `lr` was chosen for
    lr_reference_steps: int = Field(default=15000, gt=0)
    #: multiply `lr` by max(1, lr_reference_steps / total_steps), at most lr_max_scale
    scale_lr_to_steps: bool = True
    #: the largest factor of that rule (15: 3e-2 = 15 x 2e-3 is the largest rate measured
    #: to work for reinforce, at 1,500 steps on the proxy model)
    lr_max_scale: float = Field(default=15.0, ge=1.0)
    #: learning-rate schedule over the run (authors: cosine)
    schedule: ScheduleKind = "cosine"


def effective_lr(config: StepSizeConfig, step: int, total_steps: int,
                 run_steps: int | None = None) -> float:
    """The learning rate of step ``step`` of ``total_steps``: ``config.lr``, scaled to the
    run length ``run_steps`` (default ``total_steps``; see ``StepContext.reference_steps``)
    when ``scale_lr_to_steps``, then shaped by the schedule."""
    base = config.lr
    if config.scale_lr_to_steps:
        base = steps_scaled_lr(config.lr, run_steps or total_steps, config.lr_reference_steps,
                               config.lr_max_scale)
    return learning_rate(base, step, total_steps, config.schedule)


def projected_step(policy: BernoulliPolicy, project: Callable[[torch.Tensor], torch.Tensor],
                   update: torch.Tensor) -> float:
    """``s <- proj_C(s - update)`` in place; returns the mean ``|Δs|`` of the step, the
    number that tells whether a learning rate moves anything at all."""
    before = policy.probs
    policy.probs = project(before - update.to(torch.float64))
    return float((policy.probs - before).abs().mean())
