"""Baselines of score-function estimators: the control variate subtracted from the losses.

The score-function gradient ``E[L(m) ∇ log p(m|s)]`` stays unbiased when a baseline ``b``
that does not depend on the sample is subtracted from ``L(m)`` (paper App. A.4, Eq. A8),
and its variance falls when ``b`` tracks the loss level.  Every estimator that weighs
sampled masks by their losses (``reinforce``, ``ppo``) needs the same choices, so they live
here once:

- ``moving-average``: Eq. 8, ``b <- (T-1)/T b + 1/(N T) sum_i L(m_i)``, started at the
  first step's mean loss and updated *before* use, as in the authors' code (the paper's
  Algorithm 1 starts at 0, which makes the first advantages the raw losses: a large and
  useless push on every sampled unit).  Updating before use lets the current losses enter
  the baseline with weight ``1/(N T)``, a small bias the authors accept and we keep.
- ``none``: plain REINFORCE (the ablation of Table A8).
- ``leave-one-out``: each sample's baseline is the mean loss of the *other* samples of the
  same step, independent of that sample, hence unbiased (needs ``N >= 2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

BaselineKind = Literal["moving-average", "none", "leave-one-out"]
BASELINE_KINDS: tuple[str, ...] = ("moving-average", "none", "leave-one-out")


class LossBaseline:
    """One estimator's baseline: turns a step's losses into advantages ``L(m_i) - b_i``.

    Only ``moving-average`` has state (the running value), which :meth:`state_dict`
    checkpoints so that a resumed run continues bit-identically.
    """

    def __init__(self, kind: BaselineKind = "moving-average", window: int = 5) -> None:
        if kind not in BASELINE_KINDS:
            raise ValueError(f"unknown baseline {kind!r}; use one of {', '.join(BASELINE_KINDS)}")
        if window < 1:
            raise ValueError(f"the moving-average window must be >= 1, got {window}")
        self.kind = kind
        self.window = window
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        """The moving average after the last step (None before the first, and for the
        other kinds, which have no single value)."""
        return self._value

    def reset(self) -> None:
        """Forget the running value (a new stage starts at another loss level)."""
        self._value = None

    def advantages(self, losses: torch.Tensor) -> tuple[torch.Tensor, float | None]:
        """``L(m_i) - b_i`` (float64 [N]) and the shared baseline, if there is one.
        Advances the moving average as a side effect."""
        losses = losses.to(torch.float64)
        if self.kind == "none":
            return losses, None
        n = losses.numel()
        if self.kind == "leave-one-out":
            if n < 2:
                raise ValueError("the leave-one-out baseline needs at least 2 samples per step")
            others = (losses.sum() - losses) / (n - 1)
            return losses - others, None
        total, window = float(losses.sum()), self.window
        if self._value is None:
            self._value = total / n
        self._value = (window - 1) / window * self._value + total / (n * window)
        return losses - self._value, self._value

    def state_dict(self) -> dict[str, Any]:
        """``{"baseline": []}`` before the first step, else ``{"baseline": [value]}``."""
        return {"baseline": [] if self._value is None else [self._value]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = list(state["baseline"])
        self._value = float(values[0]) if values else None


class RunningScale:
    """The running root-mean-square of the advantages, to divide them by.

    ``r2 <- (W-1)/W r2 + 1/W mean_i A_i^2``, started at the first step's value and updated
    before use (as the moving-average baseline is).  Divided by it, the advantages have a
    typical size of 1 whatever the loss's scale (nats of cross-entropy, a KL, another
    model's loss spread), so one learning rate fits models and objectives whose loss
    differences between masks are 0.01 or 1 nat apart.  It rescales every unit of a step
    by the same positive factor, so the step's direction is unchanged.
    """

    def __init__(self, window: int = 50) -> None:
        if window < 1:
            raise ValueError(f"the scale window must be >= 1, got {window}")
        self.window = window
        self._mean_square: float | None = None

    @property
    def value(self) -> float | None:
        """The current RMS (None before the first step)."""
        return None if self._mean_square is None else self._mean_square ** 0.5

    def reset(self) -> None:
        self._mean_square = None

    def scale(self, advantages: torch.Tensor) -> torch.Tensor:
        """``advantages / rms`` after folding this step in (unchanged while the RMS is 0)."""
        square = float((advantages.to(torch.float64) ** 2).mean())
        if self._mean_square is None:
            self._mean_square = square
        window = self.window
        self._mean_square = (window - 1) / window * self._mean_square + square / window
        rms = self._mean_square ** 0.5
        return advantages if rms == 0.0 else advantages / rms

    def state_dict(self) -> dict[str, Any]:
        return {"advantage_rms2": [] if self._mean_square is None else [self._mean_square]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        values = list(state.get("advantage_rms2", []))
        self._mean_square = float(values[0]) if values else None
