"""The ``layer`` kind: whole decoder layers.

A decoder layer is a residual block ``x -> f(x)``; a masked layer is the identity on the
residual stream.  With a per-row mask ``m`` the output is ``x + m (f(x) - x)`` (``torch.lerp``:
exact at 0 and 1, differentiable in ``m`` for soft masks).  Hard masks also save compute:
rows whose layer is masked are not computed at all, and a layer masked in every row is not
called.  That is done by swapping the layer, for the duration of the masking, for a
:class:`MaskedLayer` in the model's layer list; the original module is untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.rowmask import (
    NotRowwise,
    by_layer,
    computing_rows,
    is_all_ones,
    select_rows,
)
from pgprune_core.model.pruned_modeling import cache_argument, record_empty_step
from pgprune_core.model.structure import ModelStructure, UnitSet, text_config
from pgprune_core.plugin.hookspecs import hookimpl

#: config attributes that hold one entry per decoder layer (cut with the layers)
PER_LAYER_CONFIG_LISTS = ("layer_types",)


class MaskedLayer(nn.Module):
    """Stands in for one decoder layer while a per-row mask is installed."""

    def __init__(self, layer: nn.Module, mask: torch.Tensor, layer_idx: int, head_dim: int) -> None:
        super().__init__()
        self.layer = layer
        self.mask = mask
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        # hard masks: the rows to compute, known once; soft masks need every row's f(x)
        self.active = None if mask.requires_grad else (mask != 0).nonzero().squeeze(1)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n_rows = hidden_states.shape[0]
        if self.mask.shape[0] != n_rows:
            raise ValueError(
                f"layer masks were installed for {self.mask.shape[0]} rows but the forward "
                f"pass got {n_rows}; install one mask row per row of the input batch"
            )
        active = self.active
        if active is not None and active.numel() == 0:
            record_empty_step(cache_argument(kwargs), self.layer_idx, hidden_states,
                              self.head_dim)
            return hidden_states
        if active is not None and active.numel() < n_rows:
            try:
                sub_args = select_rows(args, active, n_rows)
                sub_kwargs = select_rows(kwargs, active, n_rows)
            except NotRowwise:
                pass
            else:
                x = hidden_states.index_select(0, active.to(hidden_states.device))
                with computing_rows(active):
                    y = self._output(self.layer(x, *sub_args, **sub_kwargs)).to(x.device)
                blended = torch.lerp(x, y, self._weights(y, active))
                return hidden_states.index_copy(0, active.to(hidden_states.device), blended)
        y = self._output(self.layer(hidden_states, *args, **kwargs))
        return torch.lerp(hidden_states.to(y.device), y, self._weights(y, None))

    def _weights(self, y: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        mask = self.mask if rows is None else self.mask.index_select(0, rows.to(self.mask.device))
        return mask.to(device=y.device, dtype=y.dtype).reshape(-1, *([1] * (y.dim() - 1)))

    @staticmethod
    def _output(output: Any) -> torch.Tensor:
        """The layer's output, which must be the hidden states alone: a skipped layer returns
        its input, so the wrapper can only stand in for layers that return one tensor."""
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"decoder layers must return the hidden-states tensor (transformers "
                            f">= 4.56 llama-family layers do), got {type(output).__name__}")
        return output


class _Restore:
    """Puts the original layer back into the layer list."""

    def __init__(self, layer_list: nn.ModuleList, position: int, original: nn.Module) -> None:
        self.layer_list, self.position, self.original = layer_list, position, original

    def remove(self) -> None:
        self.layer_list[self.position] = self.original


class LayerGranularity(Granularity):
    """Whole decoder layers; a masked layer is the identity on the residual stream."""

    name = "layer"
    #: cut after channels and heads: removing layers renumbers the rest
    surgery_order = 10


    def units(self, structure: ModelStructure) -> UnitSet:
        n = structure.n_layers
        return UnitSet(
            self.name,
            torch.tensor([site.index for site in structure.layers], dtype=torch.int64),
            torch.zeros(n, dtype=torch.int64),
            torch.tensor([site.n_params() for site in structure.layers], dtype=torch.int64),
        )

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        handles: list[Handle] = []
        for layer, (_, columns) in by_layer(units, row_masks).items():
            mask = columns[:, 0]
            if is_all_ones(mask):
                continue
            site = structure.layers[layer]
            position = _position(structure.layer_list, site.module)
            layer_idx = int(getattr(site.attention.module, "layer_idx", layer))
            structure.layer_list[position] = MaskedLayer(site.module, mask, layer_idx,
                                                         site.attention.head_dim)
            handles.append(_Restore(structure.layer_list, position, site.module))
        return handles

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        dropped = {layer for layer, (_, kept) in by_layer(units, keep.bool()).items()
                   if not bool(kept[0])}
        if not dropped:
            return
        config = text_config(structure.model.config)
        for position in sorted(dropped, reverse=True):
            del structure.layer_list[position]
        for name in PER_LAYER_CONFIG_LISTS:
            values = getattr(config, name, None)
            if isinstance(values, list) and len(values) == structure.n_layers:
                setattr(config, name, [v for i, v in enumerate(values) if i not in dropped])
        structure.layers = [site for site in structure.layers if site.index not in dropped]
        for new_index, site in enumerate(structure.layers):
            site.index = site.attention.layer = new_index
            for part in (site.mlp, site.experts):
                if part is not None:
                    part.layer = new_index
            for module in (site.attention.module, site.module):
                if hasattr(module, "layer_idx"):
                    setattr(module, "layer_idx", new_index)  # noqa: B010
        config.num_hidden_layers = len(structure.layers)


def _position(layer_list: nn.ModuleList, module: nn.Module) -> int:
    for position, candidate in enumerate(layer_list):
        if candidate is module:
            return position
    raise ValueError("the layer is not in the model's layer list (is a mask already installed?)")


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(LayerGranularity)
