"""The Bernoulli policy p(m | s): one keep-probability per structural unit (paper Sect. 3).

Masks are sampled unit by unit, ``m_i ~ Bernoulli(s_i)`` (``m_i = 0`` prunes unit ``i``).
Every estimator needs the same three things from it: samples drawn from the run's seeded
generator (so a resumed run draws the same masks), the score function
``∇_s log p(m | s)`` (the policy-gradient term of Eq. 5) and ``log p(m | s)`` itself
(importance ratios, autograd checks).  They live here, once, so that the REINFORCE,
Gumbel and PPO plugins cannot disagree about them.

*Fixed* units (those in protected layers) are kept with probability exactly 1: they are
always sampled as 1, carry a zero score and do not enter ``log p``.  *Free* units are held
inside ``[eps, 1 - eps]`` because the score ``(m - s) / (s (1 - s))`` is infinite at 0 and
1; the projection may return exact zeros, and the clamp turns them into ``eps`` (it can
raise the expected keep count above the budget by at most ``eps`` per unit, far below
one unit, and the final mask is computed by :mod:`pgprune_core.optim.budget` from the ranking
alone, so the budget is still met exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

#: ``exact``: (m - s) / (s (1 - s)), the true score (paper Remark 4);
#: ``sqrt``: (m - s) / sqrt(s (1 - s)), the authors' code (a per-unit rescaling of the
#: gradient by sqrt(s (1 - s)), i.e. a biased but lower-variance direction);
#: ``natural``: m - s, the score times s (1 - s) = the inverse Fisher information of
#: Bernoulli(s): the natural-gradient direction, which is also the exact gradient with
#: respect to the logit of s.  Bounded by 1 in every unit, where the exact score reaches
#: 1 / eps for a unit near 0 or 1 that happens to be sampled the other way.
ScoreVariant = Literal["exact", "sqrt", "natural"]
SCORE_VARIANTS: tuple[str, ...] = ("exact", "sqrt", "natural")


class BernoulliPolicy:
    """Keep-probabilities ``s`` (float64 [n]) of independent Bernoulli masks.

    ``probs`` is a property whose setter enforces the invariants (free units in
    ``[eps, 1 - eps]``, fixed units exactly 1), so an estimator can simply write
    ``ctx.policy.probs = ctx.project(proposal)``.
    """

    def __init__(
        self, probs: torch.Tensor, fixed: torch.Tensor | None = None, eps: float = 1e-4
    ) -> None:
        if probs.dim() != 1:
            raise ValueError(f"probs must be a vector, got shape {tuple(probs.shape)}")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
        n = probs.numel()
        if fixed is None:
            fixed = torch.zeros(n, dtype=torch.bool)
        if fixed.shape != (n,) or fixed.dtype != torch.bool:
            raise ValueError(f"fixed must be a bool vector of length {n}")
        self.eps = float(eps)
        self._fixed = fixed.detach().cpu().clone()
        self._probs = torch.empty(n, dtype=torch.float64)
        self.probs = probs

    # -- the parameters -----------------------------------------------------------------
    @property
    def probs(self) -> torch.Tensor:
        """float64 [n]: the keep-probabilities (a copy; assign to change them)."""
        return self._probs.clone()

    @probs.setter
    def probs(self, value: torch.Tensor) -> None:
        value = value.detach().to(device="cpu", dtype=torch.float64)
        if value.shape != self._probs.shape:
            raise ValueError(f"expected probs of shape {tuple(self._probs.shape)}, got {tuple(value.shape)}")
        if torch.isnan(value).any():
            raise ValueError("probs contain NaN")
        value = value.clamp(self.eps, 1.0 - self.eps)
        value[self._fixed] = 1.0
        self._probs = value

    @property
    def fixed(self) -> torch.Tensor:
        """bool [n]: units kept with probability 1 (protected layers)."""
        return self._fixed.clone()

    def __len__(self) -> int:
        return int(self._probs.numel())

    # -- sampling and its derivatives ---------------------------------------------------
    def sample(self, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        """float32 [n_samples, n] of 0/1 masks, drawn with ``generator`` only (never the
        global RNG), on the generator's device; fixed units are always 1."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        device = generator.device
        uniform = torch.rand(
            (n_samples, len(self)), generator=generator, dtype=torch.float64, device=device
        )
        masks = uniform < self._probs.to(device)
        masks |= self._fixed.to(device)
        return masks.to(torch.float32)

    def score(self, masks: torch.Tensor, variant: ScoreVariant = "exact") -> torch.Tensor:
        """float64 [N, n]: ``∇_s log p(m | s)`` per sample (``exact``), the authors'
        ``(m - s) / sqrt(s (1 - s))`` (``sqrt``) or the natural-gradient ``m - s``
        (``natural``); zero on fixed units, whose probability is not a parameter."""
        m = self._check_masks(masks)
        s = self._probs
        spread = s * (1.0 - s)
        if variant == "exact":
            denominator = spread
        elif variant == "sqrt":
            denominator = spread.sqrt()
        elif variant == "natural":
            denominator = torch.ones_like(spread)
        else:
            raise ValueError(
                f"unknown score variant {variant!r}; use one of {', '.join(SCORE_VARIANTS)}"
            )
        # fixed units have s = 1 and a zero denominator: divide by 1 there, then zero them
        safe = torch.where(self._fixed, torch.ones_like(denominator), denominator)
        return torch.where(self._fixed, torch.zeros_like(m), (m - s) / safe)

    def log_prob(self, masks: torch.Tensor, probs: torch.Tensor | None = None) -> torch.Tensor:
        """float64 [N]: ``log p(m | s)`` summed over free units.

        ``probs`` evaluates it at other probabilities than the policy's (unclamped and
        differentiable: PPO's importance ratios, autograd checks of :meth:`score`).  A
        mask with a 0 on a fixed unit is impossible and gets ``-inf``.
        """
        m = self._check_masks(masks)
        s = self._probs if probs is None else probs.to(torch.float64)
        free = ~self._fixed
        m_free, s_free = m[:, free], s[free]
        terms = m_free * torch.log(s_free) + (1.0 - m_free) * torch.log1p(-s_free)
        out = terms.sum(dim=-1)
        impossible = ((m < 0.5) & self._fixed).any(dim=-1)
        return out.masked_fill(impossible, float("-inf"))

    def expected_kept(self) -> float:
        """Expected number of kept units, ``sum(s)`` (fixed units count 1 each).  A count,
        not a fraction: divide by ``len(policy)`` for the kept fraction."""
        return float(self._probs.sum())

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (``torch.load(weights_only=True)`` can read them)."""
        return {
            "probs": self._probs.clone(),
            "fixed": self._fixed.clone(),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` bit for bit (the probabilities are not re-clamped)."""
        probs = state["probs"].detach().to(dtype=torch.float64, device="cpu")
        fixed = state["fixed"].detach().to(dtype=torch.bool, device="cpu")
        if probs.shape != self._probs.shape or fixed.shape != self._fixed.shape:
            raise ValueError(
                f"policy state has {probs.numel()} units, this policy has {len(self)}"
            )
        self.eps = float(state["eps"])
        self._fixed = fixed.clone()
        self._probs = probs.clone()

    def _check_masks(self, masks: torch.Tensor) -> torch.Tensor:
        if masks.dim() == 1:
            masks = masks.unsqueeze(0)
        if masks.dim() != 2 or masks.shape[1] != len(self):
            raise ValueError(f"expected masks of shape [N, {len(self)}], got {tuple(masks.shape)}")
        return masks.detach().to(device="cpu", dtype=torch.float64)
