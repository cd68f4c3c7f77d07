"""pgprune estimator ``gumbel``: relaxed-Bernoulli masks with back-propagation through the
frozen model, registered through the ``pgprune`` entry-point group like any third-party
plugin."""

from .estimator import GumbelEstimator
from .temperature import temperature

__all__ = ["GumbelEstimator", "temperature"]
