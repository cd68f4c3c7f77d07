"""``random``: independent uniform scores, seeded by the run's seed (paper's *Random* init).

Started from these, sigmoid-norm gives a random spread of probabilities around the keep
ratio; ``--schedule random-progressive`` (paper App. A.12) starts here at a 5 % rate.
Alone (``--estimator none``) it is the random-mask baseline.

The generator's seed is derived from the run's seed and a fixed tag rather than being the
seed itself: the optimisation loop seeds its own generator with the run's seed, and were
the two streams identical, the first uniforms used to sample masks would be the very
numbers the initial probabilities were made from, coupling the first samples to the start.
"""

from __future__ import annotations

import torch

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.base import CheckedInitializer
from pgprune_core.interfaces import InitContext
from pgprune_core.plugin.hookspecs import hookimpl
from pgprune_core.run.seeding import derived_seed


class RandomInitializer(CheckedInitializer):
    """Uniform random scores from a generator seeded by the run's seed."""

    name = "random"
    kinds = frozenset({"channel", "head", "attention", "mlp", "layer", "expert"})
    needs_calibration = False

    class Config(InitializerConfig):
        """No options of its own (the name is derived from the class)."""

    def compute(self, ctx: InitContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derived_seed(ctx.seed, "random-init"))
        return torch.rand(len(ctx.layout), generator=generator, dtype=torch.float64)


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(RandomInitializer)
