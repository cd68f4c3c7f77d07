"""Which parameter entries belong to which unit, and per-unit reductions over them.

A unit's *own* parameters are the entries that disappear when the unit is cut out:

- ``channel`` j of an MLP: row j of ``gate_proj`` and ``up_proj`` (and their bias entries;
  the same rows of each block of a fused ``gate_up_proj``) and column j of ``down_proj``;
- ``head`` g (a KV group under GQA, a plain head under MHA): the rows of ``q_proj`` of its
  query heads, the rows of ``k_proj`` and ``v_proj`` of its KV head (and their bias
  entries) and the columns of ``o_proj`` of its query heads;
- ``attention`` / ``mlp`` of a layer: what all of its heads / channels own together;
- ``layer`` l: every parameter of the decoder layer (norms included).

Biases of ``down_proj`` and ``o_proj`` are shared by all units of the block and belong to
none.  Magnitude and Taylor both reduce element-wise quantities (``w^2``, ``w * dL/dw``)
over exactly these entries; keeping the map in one place means they cannot disagree on
what a unit is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pgprune_core.errors import ConfigError
from pgprune_core.model.structure import LayerSite, ModelStructure, RowBlock, UnitSet

#: element-wise values of one parameter (same shape) -> one number per unit of the layer
Reduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class UnitSlice:
    """One parameter and how to sum a same-shaped tensor over each unit's entries of it."""

    param: torch.Tensor
    reduce: Reduce


def _rows(groups: int) -> Reduce:
    """Output rows (dim 0) split into ``groups`` contiguous blocks, one per unit."""
    return lambda x: x.reshape(x.shape[0], -1).sum(1).reshape(groups, -1).sum(1)


def _columns(groups: int) -> Reduce:
    """Input columns (dim 1) split into ``groups`` contiguous blocks, one per unit."""
    return lambda x: x.sum(0).reshape(groups, -1).sum(1)


def _block_rows(block: RowBlock, groups: int) -> Reduce:
    """:func:`_rows` over the rows of one block of a (possibly fused) projection."""
    within = _rows(groups)
    return lambda x: within(x[block.rows])


def _whole(x: torch.Tensor) -> torch.Tensor:
    return x.sum().reshape(1)


def unit_slices(site: LayerSite, kind: str) -> list[UnitSlice]:
    """The parameters of one decoder layer that the units of ``kind`` own, with reducers."""
    if kind == "channel":
        mlp = site.dense_mlp()
        n = mlp.intermediate_size
        blocks = mlp.gate_up_blocks()
        slices = [UnitSlice(b.linear.weight, _block_rows(b, n)) for b in blocks]
        slices.append(UnitSlice(mlp.down_proj.weight, _columns(n)))
        slices += [UnitSlice(b.linear.bias, _block_rows(b, n)) for b in blocks
                   if b.linear.bias is not None]
        return slices
    if kind == "head":
        att = site.attention
        g = att.n_kv_heads
        blocks = att.qkv_blocks()
        slices = [UnitSlice(b.linear.weight, _block_rows(b, g)) for b in blocks]
        slices.append(UnitSlice(att.o_proj.weight, _columns(g)))
        slices += [UnitSlice(b.linear.bias, _block_rows(b, g)) for b in blocks
                   if b.linear.bias is not None]
        return slices
    if kind in BLOCK_PARTS:
        return [UnitSlice(part.param, _whole) for part in unit_slices(site, BLOCK_PARTS[kind])]
    if kind == "layer":
        return [UnitSlice(param, _whole) for param in site.module.parameters()]
    raise ConfigError(f"no parameter map for granularity '{kind}'; known: channel, head, "
                      f"attention, mlp, layer")


#: a whole block's unit -> the kind of the units it consists of
BLOCK_PARTS = {"attention": "head", "mlp": "channel"}


def unit_parameters(structure: ModelStructure, kinds: Sequence[str]) -> list[torch.Tensor]:
    """Every parameter owned by a unit of one of ``kinds`` (each once)."""
    seen: dict[int, torch.Tensor] = {}
    for site in structure.layers:
        for kind in kinds:
            for unit_slice in unit_slices(site, kind):
                seen.setdefault(id(unit_slice.param), unit_slice.param)
    return list(seen.values())


def layer_unit_sums(
    site: LayerSite,
    kind: str,
    values: Callable[[torch.Tensor], torch.Tensor],
    *,
    abs_per_parameter: bool = False,
) -> torch.Tensor:
    """float32 [units of ``kind`` in this layer]: ``values(param)`` summed over each unit's
    entries, summed over the unit's parameters.  With ``abs_per_parameter`` the absolute
    value is taken per parameter before summing across parameters (LLM-Pruner's
    ``vectorize`` Taylor)."""
    total: torch.Tensor | None = None
    for unit_slice in unit_slices(site, kind):
        part = unit_slice.reduce(values(unit_slice.param).to(torch.float32))
        if abs_per_parameter:
            part = part.abs()
        total = part if total is None else total + part.to(total.device)
    if total is None:
        raise ConfigError(f"layer {site.index} has no parameters for granularity '{kind}'")
    return total


def gather_units(
    structure: ModelStructure, unit_set: UnitSet, per_layer: Callable[[LayerSite], torch.Tensor]
) -> torch.Tensor:
    """float64 [len(unit_set)]: ``per_layer(site)[index]`` for every unit, in the unit set's
    order (``per_layer`` returns one value per unit of the kind in that layer)."""
    sites = {site.index: site for site in structure.layers}
    layers = sorted(set(unit_set.layer.tolist()))
    values = {layer: per_layer(sites[layer]).detach().to("cpu", torch.float64).flatten()
              for layer in layers}
    flat = torch.cat([values[layer] for layer in layers]) if layers else torch.zeros(0)
    starts = torch.zeros(max(layers, default=-1) + 1, dtype=torch.int64)
    sizes = torch.zeros_like(starts)
    offset = 0
    for layer in layers:
        starts[layer], sizes[layer] = offset, values[layer].numel()
        offset += values[layer].numel()
    if bool((unit_set.index >= sizes[unit_set.layer]).any()):
        raise ValueError(f"{unit_set.kind} unit indices exceed the units the layers hold")
    return flat[starts[unit_set.layer] + unit_set.index]
