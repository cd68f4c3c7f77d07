"""pgprune estimator ``reinforce`` (paper Eqs. 7 and 8), registered through the ``pgprune``
entry-point group like any third-party plugin."""

from .estimator import ReinforceEstimator

__all__ = ["ReinforceEstimator"]
