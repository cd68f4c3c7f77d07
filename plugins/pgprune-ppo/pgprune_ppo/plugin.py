"""Entry point of the distribution: registers the ``ppo`` estimator."""

from __future__ import annotations

from collections.abc import Callable

from pgprune_core import Estimator, hookimpl

from .estimator import PpoEstimator


@hookimpl
def pgprune_register_estimators(register: Callable[[type[Estimator]], None]) -> None:
    register(PpoEstimator)
