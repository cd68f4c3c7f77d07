"""pgprune estimator ``ppo``: clipped-surrogate policy optimisation of the factorised
Bernoulli policy, forward-only over the model, registered through the ``pgprune``
entry-point group like any third-party plugin."""

from .estimator import PpoEstimator
from .surrogate import ClippedSurrogate

__all__ = ["ClippedSurrogate", "PpoEstimator"]
