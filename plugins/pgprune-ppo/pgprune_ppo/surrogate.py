"""PPO's clipped surrogate for a factorised Bernoulli policy, with per-unit ratios.

For masks ``m`` sampled from the old probabilities ``s_old`` and their reward advantages
``A`` (higher = better), the surrogate that each update of ``s`` ascends is

    J(s) = 1/M sum_m sum_i min(r_mi A_m, clip(r_mi, 1 - eps, 1 + eps) A_m),
    r_mi = p(m_mi | s_i) / p(m_mi | s_old,i),    p(1 | s) = s,  p(0 | s) = 1 - s.

The ratio is taken **per unit**, not on the joint mask (``prod_i r_mi``).  Because the
policy factorises, both have the same gradient at ``s = s_old`` (``A sum_i ∇ log p(m_i|s_i)``,
the REINFORCE direction), but the joint ratio of thousands of units leaves
``[1 - eps, 1 + eps]`` after the first small update (its log is a sum over all units), which
zeroes every later epoch's gradient: PPO would collapse into one REINFORCE step.  Per unit,
the clip is a trust region on each probability: a unit stops moving in the direction its
advantage pushes once its own ratio leaves the range, while the others go on.  The price:
the surrogate no longer bounds the improvement of the joint policy (PPO's argument is about
the joint ratio); units are treated as independent agents sharing one reward.

The gradient is written out in closed form (``dr_mi/ds_i = (2 m_mi - 1) / p(m_mi | s_old,i)``,
multiplied by ``A_m`` where the term is not clipped), which makes the clipping rule explicit
and testable: a term contributes nothing when ``A_m > 0`` and ``r_mi > 1 + eps`` or when
``A_m < 0`` and ``r_mi < 1 - eps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClippedSurrogate:
    """The surrogate of one step's samples, as a function of the free units' probabilities."""

    #: float64 [M, n]: the sampled 0/1 masks of the free units
    masks: torch.Tensor
    #: float64 [M]: reward advantages (higher = better; reward = -loss)
    advantages: torch.Tensor
    #: float64 [n]: the probabilities the masks were sampled from
    old: torch.Tensor
    #: eps of the clip range [1 - eps, 1 + eps]
    clip: float

    def __post_init__(self) -> None:
        if self.masks.dim() != 2 or self.masks.shape != (self.advantages.numel(), self.old.numel()):
            raise ValueError(
                f"masks must be [M, n] = [{self.advantages.numel()}, {self.old.numel()}], "
                f"got {list(self.masks.shape)}"
            )
        if not 0.0 < self.clip < 1.0:
            raise ValueError(f"the clip range must lie in (0, 1), got {self.clip}")

    def unit_probs(self, s: torch.Tensor) -> torch.Tensor:
        """float64 [M, n]: ``p(m_mi | s_i)``."""
        return self.masks * s + (1.0 - self.masks) * (1.0 - s)

    def ratios(self, s: torch.Tensor) -> torch.Tensor:
        """float64 [M, n]: the per-unit probability ratios ``r_mi``."""
        return self.unit_probs(s) / self.unit_probs(self.old)

    def clipped(self, s: torch.Tensor) -> torch.Tensor:
        """bool [M, n]: the terms whose gradient the clip removes (the ratio has left the
        range in the direction the advantage pushes)."""
        r, a = self.ratios(s), self.advantages[:, None]
        return ((a > 0) & (r > 1.0 + self.clip)) | ((a < 0) & (r < 1.0 - self.clip))

    def value(self, s: torch.Tensor) -> torch.Tensor:
        """The surrogate ``J(s)`` (a float64 scalar, differentiable in ``s``)."""
        r, a = self.ratios(s), self.advantages[:, None]
        terms = torch.minimum(r * a, r.clamp(1.0 - self.clip, 1.0 + self.clip) * a)
        return terms.sum(dim=1).mean()

    def gradient(self, s: torch.Tensor) -> torch.Tensor:
        """float64 [n]: ``∇_s J(s)`` (ascent direction)."""
        slope = (2.0 * self.masks - 1.0) / self.unit_probs(self.old)
        terms = torch.where(self.clipped(s), torch.zeros_like(slope), slope * self.advantages[:, None])
        return terms.mean(dim=0)
