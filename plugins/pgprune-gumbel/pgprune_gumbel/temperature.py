"""The temperature schedule of the relaxed-Bernoulli masks.

A high temperature gives smooth masks and low-variance gradients of a *different* model
(channels scaled by fractions); a low one gives nearly binary masks, a nearly unbiased but
high-variance gradient (Huijben et al. 2022, the paper's Remark 3).  The usual compromise is
to anneal from ``tau_start`` to ``tau_end`` over the run.
"""

from __future__ import annotations

from typing import Literal

#: exponential: geometric interpolation (equal ratios per step); linear: equal differences
TemperatureSchedule = Literal["exponential", "linear"]


def temperature(step: int, total_steps: int, start: float, end: float,
                kind: TemperatureSchedule) -> float:
    """The temperature of step ``step`` (0-based) of ``total_steps``: ``start`` at the first
    step, ``end`` at the last, interpolated by ``kind`` (clipped outside the run)."""
    if start <= 0 or end <= 0:
        raise ValueError(f"temperatures must be positive, got {start} and {end}")
    progress = min(max(step, 0), max(total_steps - 1, 1)) / max(total_steps - 1, 1)
    if kind == "exponential":
        return start * (end / start) ** progress
    if kind == "linear":
        return start + (end - start) * progress
    raise ValueError(f"unknown temperature schedule {kind!r}; use exponential or linear")
