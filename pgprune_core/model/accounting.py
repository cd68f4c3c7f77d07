"""How many parameters a keep-vector removes, exactly.

Each unit's ``cost`` is what cutting that unit alone removes.  Channels and heads of a layer
are disjoint, so their costs add up; but some units contain others of the same layer: a
``layer`` unit contains every unit of its layer, an ``attention`` unit the layer's heads,
an ``mlp`` unit its channels.  When a containing unit is cut, the units inside it must not
be counted again.  This is the number surgery removes (``numel`` before minus after), which
the pipeline checks.
"""

from __future__ import annotations

import torch

from pgprune_core.model.granularity.attention import AttentionGranularity
from pgprune_core.model.granularity.channel import ChannelGranularity
from pgprune_core.model.granularity.head import HeadGranularity
from pgprune_core.model.granularity.layer import LayerGranularity
from pgprune_core.model.granularity.mlp import MlpGranularity
from pgprune_core.model.structure import UnitLayout

#: kind -> the kinds whose units of the same layer it contains (None: every other kind)
CONTAINS: dict[str, tuple[str, ...] | None] = {
    LayerGranularity.name: None,
    AttentionGranularity.name: (HeadGranularity.name,),
    MlpGranularity.name: (ChannelGranularity.name,),
}


def removed_params(layout: UnitLayout, keep: torch.Tensor) -> int:
    """Parameters removed by cutting every unit where ``keep`` (bool ``[len(layout)]``) is
    False, counting units nested in a cut unit once."""
    if keep.shape != (len(layout),):
        raise ValueError(f"keep must have shape [{len(layout)}], got {list(keep.shape)}")
    parts = layout.split(~keep.bool().cpu())
    gone = {outer: layout[outer].layer[parts[outer]] for outer in CONTAINS if outer in parts}
    total = 0
    for unit_set in layout:
        cut = parts[unit_set.kind]
        for outer, inner in CONTAINS.items():
            if outer in gone and outer != unit_set.kind and (inner is None or unit_set.kind in inner):
                cut = cut & ~torch.isin(unit_set.layer, gone[outer])
        total += int(unit_set.cost[cut].sum())
    return total
