"""How many parameters a keep-vector removes, exactly.

Each unit's ``cost`` is what cutting that unit alone removes.  Channels and heads of a layer
are disjoint, so their costs add up; but a ``layer`` unit contains the channels and heads of
its layer, so when a layer is dropped its channels and heads must not be counted again.
This is the number surgery removes (``numel`` before minus after), which the pipeline checks.
"""

from __future__ import annotations

import torch

from pgprune_core.model.granularity.layer import LayerGranularity
from pgprune_core.model.structure import UnitLayout


def removed_params(layout: UnitLayout, keep: torch.Tensor) -> int:
    """Parameters removed by cutting every unit where ``keep`` (bool ``[len(layout)]``) is
    False, counting units nested in a dropped layer once."""
    if keep.shape != (len(layout),):
        raise ValueError(f"keep must have shape [{len(layout)}], got {list(keep.shape)}")
    dropped = ~keep.bool().cpu()
    parts = layout.split(dropped)
    whole = LayerGranularity.name
    gone_layers = torch.zeros(0, dtype=torch.int64)
    total = 0
    if whole in parts:
        layers = layout[whole]
        gone_layers = layers.layer[parts[whole]]
        total += int(layers.cost[parts[whole]].sum())
    for unit_set in layout:
        if unit_set.kind == whole:
            continue
        cut = parts[unit_set.kind] & ~torch.isin(unit_set.layer, gone_layers)
        total += int(unit_set.cost[cut].sum())
    return total
