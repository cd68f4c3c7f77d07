"""Built-in initializers: random, uniform, magnitude, wanda-sp, layerwise-ppl, taylor."""

from __future__ import annotations

from ..initializers.layerwise_ppl import LayerwisePplInitializer
from ..initializers.magnitude import MagnitudeInitializer
from ..initializers.random_scores import RandomInitializer
from ..initializers.taylor import TaylorInitializer
from ..initializers.uniform import UniformInitializer
from ..initializers.wanda_sp import WandaSpInitializer
from ..plugins import hookimpl


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    for cls in (RandomInitializer, UniformInitializer, MagnitudeInitializer, WandaSpInitializer,
                LayerwisePplInitializer, TaylorInitializer):
        register(cls)
