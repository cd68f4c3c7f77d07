"""Built-in estimator ``none``: no optimisation, prune by the initializer's scores."""

from __future__ import annotations

from pgprune_core.interfaces import Estimator, StepContext, StepStats
from pgprune_core.plugin.hookspecs import hookimpl


class NoEstimator(Estimator):
    """No optimisation: the initializer's scores alone decide the mask (metric baselines)."""

    name = "none"
    optimises = False


    def step(self, ctx: StepContext) -> StepStats:
        raise RuntimeError("the 'none' estimator takes no steps; the loop must not call it")


@hookimpl
def pgprune_register_estimators(register):  # type: ignore[no-untyped-def]
    register(NoEstimator)
