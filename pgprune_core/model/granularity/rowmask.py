"""Per-row masks inside one batched forward pass.

One forward evaluates many masks at once: the batch is repeated once per mask and every row
of the input carries its own row of the mask matrix.  The channel and head kinds scale an
activation by its row's mask; the layer kind may compute only the rows whose layer is kept.
When it does, the hooks *inside* that layer see fewer rows than they hold masks for, so the
layer publishes the rows it computes (:func:`computing_rows`) and every hook picks the same
rows of its mask (:func:`current_rows`).  A context variable carries that selection because
the hooks are called by torch, deep inside the model's own forward, where no argument of
ours can reach them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from pgprune_core.interfaces import Handle
from pgprune_core.model.placement import module_device
from pgprune_core.model.structure import UnitSet

_ROWS: ContextVar[torch.Tensor | None] = ContextVar("pgprune_computing_rows", default=None)


@contextlib.contextmanager
def computing_rows(rows: torch.Tensor) -> Iterator[None]:
    """Within the block, the forward computes only ``rows`` (int64 indices) of the batch."""
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def current_rows(mask: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The rows of ``mask`` ([rows, ...]) that belong to the activation being computed."""
    rows = _ROWS.get()
    if rows is not None:
        mask = mask.index_select(0, rows.to(mask.device))
    if mask.shape[0] != n_rows:
        raise ValueError(
            f"masks were installed for {mask.shape[0]} rows but the forward pass got "
            f"{n_rows}; install one mask row per row of the input batch"
        )
    return mask


class NotRowwise(Exception):
    """An argument of a module that cannot be restricted to a subset of rows."""


def select_rows(value: Any, rows: torch.Tensor | slice, n_rows: int) -> Any:
    """``value`` restricted to ``rows`` (int64 indices, or a slice: a view) where it is
    batched (a tensor of at least two dimensions whose first is the batch of ``n_rows``);
    broadcast tensors and plain values pass as they are.  Anything else (a KV cache, a
    flex-attention block mask) cannot be restricted: :class:`NotRowwise`."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 2 and value.shape[0] == n_rows:
            if isinstance(rows, slice):
                return value[rows]
            return value.index_select(0, rows.to(value.device))
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(select_rows(item, rows, n_rows) for item in value)
    if isinstance(value, dict):
        return {key: select_rows(item, rows, n_rows) for key, item in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise NotRowwise(type(value).__name__)


def by_layer(units: UnitSet, values: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Split ``values`` (``[..., n_kind]``: masks or a keep vector) by layer.

    Returns ``{layer: (index, columns)}``: the units' indices inside the layer and the
    matching ``values[..., cols]``.  Columns of one layer are contiguous in every layout we
    build, so they are returned as views (no copy, and gradients flow unchanged).
    """
    result: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if len(units) == 0:
        return result
    layers, counts = torch.unique_consecutive(units.layer, return_counts=True)
    if layers.numel() == torch.unique(units.layer).numel():
        start = 0
        for layer, count in zip(layers.tolist(), counts.tolist(), strict=True):
            cols = slice(start, start + count)
            result[layer] = (units.index[cols], values[..., cols])
            start += count
        return result
    for layer in torch.unique(units.layer).tolist():
        cols = (units.layer == layer).nonzero().squeeze(1)
        result[layer] = (units.index[cols], values.index_select(-1, cols.to(values.device)))
    return result


def full_width(index: torch.Tensor, columns: torch.Tensor, width: int) -> torch.Tensor:
    """``columns`` ([rows, k], for the units ``index`` of a layer) spread over all ``width``
    units of that layer; units without a column keep a mask of 1."""
    if index.numel() == width and torch.equal(index, torch.arange(width)):
        return columns
    ones = torch.ones(columns.shape[0], width, dtype=columns.dtype, device=columns.device)
    return ones.index_copy(1, index.to(columns.device), columns)


def is_all_ones(mask: torch.Tensor) -> bool:
    """A hard mask that keeps everything: the module can run untouched (bit-exact)."""
    return not mask.requires_grad and bool((mask == 1).all())


def input_scaler(mask: torch.Tensor) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
    """A forward pre-hook multiplying the module's input (``[rows, ..., width]``) by its
    row's mask (``[rows, width]``): used before ``down_proj`` (channels) and ``o_proj``
    (heads), where a zero removes exactly what physically cutting the unit removes."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        m = current_rows(mask, x.shape[0])
        shape = (m.shape[0],) + (1,) * (x.dim() - 2) + (m.shape[1],)
        return (x * m.reshape(shape), *args[1:])

    return hook


def per_layer_units(kind: str, layers: Iterable[tuple[int, int, int]]) -> UnitSet:
    """Units numbered ``0..count-1`` inside each layer, every unit of a layer at the same
    cost: ``layers`` yields ``(layer index, unit count, cost per unit)``."""
    layer_ids, index, cost = [], [], []
    for layer, count, unit_cost in layers:
        layer_ids.append(torch.full((count,), layer, dtype=torch.int64))
        index.append(torch.arange(count, dtype=torch.int64))
        cost.append(torch.full((count,), unit_cost, dtype=torch.int64))
    empty = [torch.zeros(0, dtype=torch.int64)]
    return UnitSet(kind, torch.cat(layer_ids or empty), torch.cat(index or empty),
                   torch.cat(cost or empty))


def install_input_masks(
    units: UnitSet,
    row_masks: torch.Tensor,
    target: Callable[[int], tuple[nn.Linear, int, int]],
) -> list[Handle]:
    """Scale the input of one module per layer by its rows' masks.

    ``target(layer)`` names that module, how many units the layer has and how many input
    features each unit spans (``head_dim`` times the query heads of a KV group; 1 for a
    channel).  Layers whose mask keeps everything get no hook and run bit-exactly.
    """
    handles: list[Handle] = []
    for layer, (index, columns) in by_layer(units, row_masks).items():
        if is_all_ones(columns):
            continue
        module, width, features = target(layer)
        mask = full_width(index, columns, width)
        if features > 1:
            mask = mask.repeat_interleave(features, dim=1)
        # an offloaded module's weight is on "meta": the mask goes where the module computes
        mask = mask.to(device=module_device(module), dtype=module.weight.dtype)
        handles.append(module.register_forward_pre_hook(input_scaler(mask)))
    return handles
