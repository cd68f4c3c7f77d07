"""Exact Euclidean projection onto C = {c^T s <= K, 0 <= s <= 1} (paper App. A.1).

For one constraint, the KKT conditions give ``s(v) = clip(z - v c, 0, 1)`` with ``v >= 0``:
``v = 0`` when ``clip(z)`` already satisfies the budget, else the unique root of
``g(v) = c^T s(v) - K``.  ``g`` is continuous and non-increasing in ``v``, so bisection
finds the root to machine precision; we bisect in float64 until the bracket stops
shrinking and return the *upper* end, which is feasible by construction.  With unit
weights this is the authors' operator; with parameter counts as ``c`` it is the ``params``
budget.  (The authors stop after 20 iterations at tolerance 1e-3; we do not, because the
projection is negligible next to one forward pass.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pgprune_core.interfaces import Constraint, Projector
from pgprune_core.plugin.hookspecs import hookimpl


def project_one(z: torch.Tensor, c: torch.Tensor, capacity: float, max_iter: int = 200) -> torch.Tensor:
    """Project ``z`` onto ``{c^T s <= capacity, 0 <= s <= 1}``; float64 in, float64 out."""
    if z.numel() == 0:
        return z.clone()
    if torch.any(c <= 0):
        raise ValueError("constraint weights must be positive")
    s = z.clamp(0.0, 1.0)
    if float(c @ s) <= capacity:
        return s
    if capacity <= 0:
        return torch.zeros_like(z)
    lo, hi = 0.0, float(((z - 0.0) / c).max().clamp_min(0.0))  # at hi every s_i is 0
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:  # the bracket cannot shrink further in float64
            break
        if float(c @ (z - mid * c).clamp(0.0, 1.0)) > capacity:
            lo = mid
        else:
            hi = mid
    return (z - hi * c).clamp(0.0, 1.0)


def project(z: torch.Tensor, constraints: Sequence[Constraint]) -> torch.Tensor:
    """Project ``z`` onto the intersection of disjoint-support constraints and the box."""
    work = z.detach().to(torch.float64)
    out = work.clamp(0.0, 1.0)
    for constraint in constraints:
        idx = constraint.indices
        out[idx] = project_one(work[idx], constraint.weights.to(torch.float64), float(constraint.capacity))
    return out.to(z.dtype)


class BisectionProjector(Projector):
    """Exact Euclidean projection onto {c^T s <= K, 0 <= s <= 1} by float64 bisection."""

    name = "bisection"


    def project(self, z: torch.Tensor, constraints: Sequence[Constraint]) -> torch.Tensor:
        return project(z, constraints)


@hookimpl
def pgprune_register_projectors(register):  # type: ignore[no-untyped-def]
    register(BisectionProjector)
