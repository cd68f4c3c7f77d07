"""Built-in projector ``bisection``: the exact projection of paper App. A.1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..config_base import PluginConfig
from ..interfaces import Constraint, Projector
from ..plugins import hookimpl
from ..projection import project


class BisectionProjector(Projector):
    """Exact Euclidean projection onto {c^T s <= K, 0 <= s <= 1} by float64 bisection."""

    name = "bisection"

    class Config(PluginConfig):
        name: Literal["bisection"] = "bisection"

    def project(self, z: torch.Tensor, constraints: Sequence[Constraint]) -> torch.Tensor:
        return project(z, constraints)


@hookimpl
def pgprune_register_projectors(register):  # type: ignore[no-untyped-def]
    register(BisectionProjector)
