"""Cutting rows or columns out of ``nn.Linear`` layers in place.

Surgery keeps the module objects (and so their names, devices, dtypes and any hooks a caller
installed) and swaps only their weight tensors: the pruned model is the same object graph
with smaller matrices, which is what ``save_pretrained`` and the KV cache expect.  The
weights of an offloaded module (accelerate) are read in, cut and offloaded again one
module at a time (:func:`~pgprune_core.model.placement.editing`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pgprune_core.model.placement import editing
from pgprune_core.model.structure import RowBlock


def _replace(linear: nn.Linear, name: str, value: torch.Tensor) -> None:
    old = getattr(linear, name)
    setattr(linear, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))


def keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    """Keep only the output features ``rows`` (int64 indices, in order) of ``linear``."""
    with editing(linear), torch.no_grad():
        rows = rows.to(linear.weight.device)
        _replace(linear, "weight", linear.weight.index_select(0, rows))
        if linear.bias is not None:
            _replace(linear, "bias", linear.bias.index_select(0, rows))
    linear.out_features = int(rows.numel())


def block_rows(blocks: Sequence[RowBlock],
               kept: Sequence[torch.Tensor]) -> list[tuple[nn.Linear, torch.Tensor]]:
    """Per linear layer, its output rows that hold rows ``kept[i]`` (indices inside the
    block) of every block ``blocks[i]`` it holds: a fused projection appears once, its
    blocks in order, each narrowed to its kept rows."""
    by_linear: dict[int, tuple[nn.Linear, list[torch.Tensor]]] = {}
    for block, rows in zip(blocks, kept, strict=True):
        entry = by_linear.setdefault(id(block.linear), (block.linear, []))
        entry[1].append(rows.to(torch.int64) + block.start)
    return [(linear, torch.cat(parts)) for linear, parts in by_linear.values()]


def keep_block_rows(blocks: Sequence[RowBlock], kept: Sequence[torch.Tensor]) -> None:
    """Keep rows ``kept[i]`` (indices inside the block) of every block ``blocks[i]``; a
    linear layer holding several blocks (a fused projection) is cut once, its blocks
    staying in order and each shrinking to its kept rows."""
    for linear, rows in block_rows(blocks, kept):
        keep_rows(linear, rows)


def keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    """Keep only the input features ``columns`` of ``linear`` (its bias is untouched)."""
    with editing(linear), torch.no_grad():
        columns = columns.to(linear.weight.device)
        _replace(linear, "weight", linear.weight.index_select(1, columns))
    linear.in_features = int(columns.numel())


def head_features(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices of whole heads: head ``h`` owns features ``h*head_dim ... + head_dim-1``."""
    offsets = torch.arange(head_dim, dtype=torch.int64)
    return (heads.to(torch.int64)[:, None] * head_dim + offsets[None, :]).reshape(-1)


def group_features(groups: torch.Tensor, group_size: int,
                   head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature indices of whole KV groups (``groups``, int64): those of their query heads
    (``group_size`` per group, in order) and those of their key/value heads."""
    groups = groups.to(torch.int64)
    queries = (groups[:, None] * group_size + torch.arange(group_size)).reshape(-1)
    return head_features(queries, head_dim), head_features(groups, head_dim)


def kept_indices(width: int, dropped: torch.Tensor) -> torch.Tensor:
    """``0..width-1`` without the ``dropped`` indices, in order."""
    keep = torch.ones(width, dtype=torch.bool)
    keep[dropped.to(torch.int64)] = False
    return keep.nonzero().squeeze(1)
