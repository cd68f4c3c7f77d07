"""Learning-rate schedules and the step-count rule, shared by every estimator.

The authors train with plain SGD under a cosine schedule over one epoch (REFERENCE.md);
``constant`` is there for ablations and for estimators that adapt their own step.

:func:`steps_scaled_lr` answers a problem measured on our proxy model: a learning rate
tuned for the paper's ~15,000 steps barely moves the probabilities in 1,500.  Scaling it by
``reference_steps / total_steps`` keeps the *total* movement ``sum_t lr_t`` of the
schedule equal to the reference run's, which is what decides how far the probabilities
can travel from their initialisation.
"""

from __future__ import annotations

import math
from typing import Literal

from pgprune_core.errors import ConfigError

#: names accepted by :func:`learning_rate` (use as the type of an estimator option)
ScheduleKind = Literal["constant", "cosine"]


def learning_rate(base_lr: float, step: int, total_steps: int, kind: ScheduleKind) -> float:
    """The learning rate of step ``step`` (0-based) of ``total_steps``.

    ``cosine``: ``base_lr * 0.5 * (1 + cos(pi * step / total_steps))``, i.e. ``base_lr``
    at the first step and decaying towards 0 (never reaching it: the last step is
    ``total_steps - 1``).  ``step`` is clipped to ``[0, total_steps]``, so calling it past
    the end gives 0 rather than a rising rate.
    """
    if kind == "constant":
        return float(base_lr)
    if kind == "cosine":
        if total_steps <= 0:
            return float(base_lr)
        t = min(max(step, 0), total_steps)
        return float(base_lr) * 0.5 * (1.0 + math.cos(math.pi * t / total_steps))
    raise ConfigError(f"unknown learning-rate schedule {kind!r}; choose constant or cosine")


def steps_scaled_lr(
    base_lr: float, total_steps: int, reference_steps: int, max_scale: float = math.inf
) -> float:
    """``base_lr * min(max_scale, max(1, reference_steps / total_steps))``.

    A rate chosen for a ``reference_steps``-step run, applied to a shorter run, is raised
    so that both runs have the same total movement (sum of step sizes under the same
    schedule shape).  Longer runs keep ``base_lr``: more steps at the paper's rate only
    average more noise away, and shrinking the rate would gain nothing measured.
    ``max_scale`` bounds the extrapolation: the noise of a run grows like
    ``lr * sqrt(steps)``, so matching the movement of a very short run (tens of steps)
    would mostly randomise the initial probabilities.
    """
    if reference_steps <= 0:
        raise ConfigError(f"the reference step count must be positive, got {reference_steps}")
    if max_scale < 1.0:
        raise ConfigError(f"the largest lr scale must be >= 1, got {max_scale}")
    if total_steps <= 0:
        return float(base_lr)
    return float(base_lr) * min(max_scale, max(1.0, reference_steps / total_steps))
