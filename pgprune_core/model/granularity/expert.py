"""The ``expert`` kind: the routed experts of mixture-of-experts layers.

Expert ``e`` of a sparse block is slice ``e`` (first dimension) of every fused expert
parameter (transformers' ``gate_up_proj`` / ``down_proj``) and row ``e`` of the router's
weight.  A removed expert is removed from routing: the router's top-k is taken over the
kept experts only, and their weights are renormalised as the model's own router does
(Mixtral always; Qwen-MoE when ``norm_topk_prob``).  The masked forward and the cut model
follow the same rule:

- masked, every row of the batch with its own mask: the router's logits get ``log m`` added
  (``-inf`` for a removed expert, ``0`` for a kept one) before the router's softmax, top-k
  and renormalisation, which :func:`route` redoes on the router's own logits; a softmax
  over logits with ``-inf`` entries is the softmax over the other entries, so the weights
  equal those of the router of the cut model, whose rows of the removed experts are gone;
- cut: the experts' slices and the router's rows are removed, so the model's own router
  computes exactly that.

A sampled mask may keep fewer than ``top_k`` experts of a layer: the surplus choices then
carry weight 0, and a row that keeps none of a layer's experts routes nowhere (the block
adds its shared expert, if any, and nothing else).  The final mask keeps at least ``top_k``
experts in every layer (the units carry that floor in ``UnitSet.min_kept``; the budget
refuses a rate it cannot meet before any optimisation), and surgery refuses a mask that
does not.  Soft masks (relaxation-based estimators) enter through the same ``log m``, so
the routing weights stay differentiable in them.  A shared expert (Qwen2-MoE's, with its
own sigmoid gate) is not a routed expert: the ``channel`` and ``mlp`` kinds see it as the
layer's dense MLP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pgprune_core.errors import ModelError
from pgprune_core.interfaces import Granularity, Handle
from pgprune_core.model.granularity.rowmask import (
    by_layer,
    current_rows,
    full_width,
    is_all_ones,
    per_layer_units,
)
from pgprune_core.model.placement import editing
from pgprune_core.model.pruned_modeling import set_expert_count
from pgprune_core.model.structure import ExpertSite, ModelStructure, UnitSet
from pgprune_core.plugin.hookspecs import hookimpl


def route(logits: torch.Tensor, top_k: int, renormalise: bool,
          log_keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The routers' rule: softmax (in float32) over ``logits`` (``[tokens, experts]``, plus
    ``log_keep`` when given), the ``top_k`` largest probabilities and their experts, the
    probabilities divided by their sum when ``renormalise``.  Rows whose experts are all
    removed get weight 0 everywhere."""
    if log_keep is not None:
        logits = logits.float() + log_keep
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if log_keep is not None:
        weights = torch.nan_to_num(weights, nan=0.0)
    return weights, experts


class _RoutingMask:
    """Per-row expert masks of one sparse block: a forward pre-hook on the block spreads
    each row's mask over its tokens, a forward hook on the router re-routes its logits."""

    def __init__(self, site: ExpertSite, mask: torch.Tensor) -> None:
        self.site = site
        self.mask = mask
        self.log_keep: torch.Tensor | None = None

    def before_block(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        hidden = args[0]
        rows, tokens = hidden.shape[0], hidden[0].numel() // hidden.shape[-1]
        mask = current_rows(self.mask, rows).to(device=hidden.device, dtype=torch.float32)
        self.log_keep = torch.log(mask).repeat_interleave(tokens, dim=0)

    def after_router(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if self.log_keep is None:
            raise RuntimeError("the router ran outside its sparse block's forward")
        logits, scores = output[0], output[1]
        if logits.shape[0] != self.log_keep.shape[0]:
            raise ValueError(f"the router saw {logits.shape[0]} tokens, the block "
                             f"{self.log_keep.shape[0]}")
        weights, experts = route(logits, self.site.top_k, self.site.renormalise, self.log_keep)
        self.log_keep = None
        return (logits, weights.to(scores.dtype), experts, *output[3:])


class ExpertGranularity(Granularity):
    """Routed experts of mixture-of-experts layers (removed from routing and cut)."""

    name = "expert"
    surgery_order = 0

    def units(self, structure: ModelStructure) -> UnitSet:
        sites = [site.experts for site in structure.layers if site.experts is not None]
        if not sites:
            raise ModelError(f"granularity 'expert': the {structure.architecture} model has no "
                             f"mixture-of-experts layers")
        units = per_layer_units(self.name, ((s.layer, s.n_experts, s.expert_cost()) for s in sites))
        units.min_kept = {s.layer: s.top_k for s in sites}
        return units

    def install(self, structure: ModelStructure, units: UnitSet,
                row_masks: torch.Tensor) -> list[Handle]:
        handles: list[Handle] = []
        for layer, (index, columns) in by_layer(units, row_masks).items():
            if is_all_ones(columns):
                continue
            site = _site(structure, layer)
            routing = _RoutingMask(site, full_width(index, columns, site.n_experts))
            handles.append(site.module.register_forward_pre_hook(routing.before_block))
            handles.append(site.router.register_forward_hook(routing.after_router))
        return handles

    def remove(self, structure: ModelStructure, units: UnitSet, keep: torch.Tensor) -> None:
        for layer, (index, kept) in by_layer(units, keep.bool()).items():
            site = _site(structure, layer)
            kept_experts = index[kept.cpu()]
            if kept_experts.numel() < site.top_k:
                raise ModelError(f"layer {layer} would keep {kept_experts.numel()} of its "
                                 f"{site.n_experts} experts, fewer than the router's top-k "
                                 f"({site.top_k})")
            if kept_experts.numel() < site.n_experts:
                remove_experts(site, kept_experts)


def _site(structure: ModelStructure, layer: int) -> ExpertSite:
    site = structure.layers[layer].experts
    if site is None:
        raise ModelError(f"layer {layer} has no routed experts")
    return site


def remove_experts(site: ExpertSite, kept: torch.Tensor) -> None:
    """Keep only the experts ``kept`` (indices, ascending) of a sparse block: their slices of
    every expert parameter and their router rows."""

    def select(module: nn.Module, name: str) -> None:
        old = getattr(module, name)
        value = old.detach().index_select(0, kept.to(old.device)).contiguous()
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))

    with editing(site.experts), editing(site.router), torch.no_grad():
        for name in site.expert_params:
            select(site.experts, name)
        select(site.router, "weight")
        if getattr(site.router, "bias", None) is not None:
            select(site.router, "bias")
    site.n_experts = int(kept.numel())
    set_expert_count(site.router, site.experts, site.n_experts)


@hookimpl
def pgprune_register_granularities(register):  # type: ignore[no-untyped-def]
    register(ExpertGranularity)
