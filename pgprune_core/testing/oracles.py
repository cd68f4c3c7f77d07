"""Synthetic loss oracles with a known expected loss, for testing estimators without a model.

Estimators see the model only through the oracle interface of
:class:`pgprune_core.model.masking.LossOracle`: ``losses(batch, masks) -> [N]`` (forward only),
``loss(batch, soft_masks) -> [N]`` (differentiable in the masks), the counters
``forward_passes`` / ``backward_passes`` and ``count_backward``.  A quadratic objective
``L(m) = offset + a.m + m^T B m`` honours that interface and has a closed-form expectation
under independent Bernoulli masks, so a test can check that an estimator actually lowers
``E[L]`` under a budget, in milliseconds, for any estimator plugin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class QuadraticOracle:
    """``L(m) = offset + a.m + m^T B m`` on 0/1 or relaxed masks ``m`` (float64 maths).

    With ``m_i ~ Bernoulli(s_i)`` independent, ``E[m_i] = E[m_i^2] = s_i`` and
    ``E[m_i m_j] = s_i s_j`` (i != j), hence :meth:`expected_loss`.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor | None = None, offset: float = 0.0) -> None:
        n = a.numel()
        self.a = a.to(torch.float64)
        self.b = torch.zeros(n, n, dtype=torch.float64) if b is None else b.to(torch.float64)
        self.offset = float(offset)
        self.forward_passes = 0
        self.backward_passes = 0
        #: the masks of the last call, as passed in (for tests that inspect them)
        self.last_masks = torch.empty(0)

    def _evaluate(self, masks: torch.Tensor) -> torch.Tensor:
        self.last_masks = masks
        self.forward_passes += masks.shape[0]
        m = masks.to(torch.float64)
        return self.offset + m @ self.a + ((m @ self.b) * m).sum(-1)

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """float64 [N], no autograd."""
        with torch.no_grad():
            return self._evaluate(masks.detach())

    def loss(self, batch: torch.Tensor, soft_masks: torch.Tensor) -> torch.Tensor:
        """float64 [N], differentiable w.r.t. ``soft_masks``."""
        return self._evaluate(soft_masks)

    def count_backward(self, n: int = 1) -> None:
        self.backward_passes += n

    def expected_loss(self, s: torch.Tensor) -> float:
        """``E[L(m)]`` for ``m_i ~ Bernoulli(s_i)`` independent."""
        s = s.to(torch.float64)
        d = self.b.diagonal()
        return float(self.offset + self.a @ s + s @ self.b @ s - d @ s**2 + d @ s)


class ScriptedOracle:
    """Returns the given loss vectors in turn, whatever the masks (forward only)."""

    def __init__(self, script: Sequence[Sequence[float]]) -> None:
        self.script = [list(row) for row in script]
        self.masks: list[torch.Tensor] = []
        self.forward_passes = 0
        self.backward_passes = 0

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        self.masks.append(masks)
        self.forward_passes += masks.shape[0]
        return torch.tensor(self.script[len(self.masks) - 1], dtype=torch.float32)

    def loss(self, batch: torch.Tensor, soft_masks: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a forward-only estimator asked for a differentiable loss")

    def count_backward(self, n: int = 1) -> None:
        self.backward_passes += n
