"""From metric scores to initial keep-probabilities (paper App. A.11).

``sigmoid-norm`` (the paper's main setting): per granularity kind, z-score the scores of
the free units, squash with a sigmoid, then shift so that the mean probability equals the
keep ratio and clamp to [0, 1] (the authors' code does the shift; without it a 50% rate
would start far outside the budget and the first projection would flatten the ranking).
``score-const``: the metric's own mask at the target rate, kept units at ``c`` (0.8) and
pruned ones at ``1 - c``.  Both are followed by the run's projector.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pgprune_core.model.structure import UnitLayout


def sigmoid_norm(
    scores: torch.Tensor, layout: UnitLayout, keep_ratio: float, free: torch.Tensor
) -> torch.Tensor:
    """float64 [n]: sigmoid(zscore(scores)) per kind, mean shifted to ``keep_ratio``."""
    out = torch.ones(len(layout), dtype=torch.float64)
    scores = scores.to(torch.float64)
    for sl in layout.offsets.values():
        idx = torch.arange(sl.start, sl.stop)[free[sl]]
        if idx.numel() == 0:
            continue
        x = scores[idx]
        std = x.std(unbiased=False) if idx.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        z = (x - x.mean()) / std if float(std) > 0 else torch.zeros_like(x)
        s = torch.sigmoid(z)
        out[idx] = (s - s.mean() + keep_ratio).clamp(0.0, 1.0)
    return out


def score_const(
    scores: torch.Tensor, final_mask: Callable[[torch.Tensor], torch.Tensor], const: float
) -> torch.Tensor:
    """float64 [n]: ``const`` where the metric's own mask keeps a unit, ``1 - const`` elsewhere."""
    keep = final_mask(scores)
    return torch.where(keep, torch.tensor(const, dtype=torch.float64),
                       torch.tensor(1.0 - const, dtype=torch.float64))
