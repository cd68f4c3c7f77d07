"""``taylor``: LLM-Pruner's first-order Taylor importance (Ma et al. 2023), per unit.

The loss change from zeroing a weight is, to first order, ``-w * dL/dw``; a unit's
importance aggregates it over the entries it owns (:mod:`.unit_params`: gate/up rows and
the down column of a channel; q/k/v rows and o columns of a head or KV group; all weights
of a layer).  ``variant``:

- ``param-first`` (LLM-Pruner's ``--taylor param_first``, its recommended LLaMA setting):
  ``sum |w * g|`` over the unit's entries, i.e. element-wise magnitudes summed over each
  coupled parameter and over the parameters (``group_reduction="sum"``);
- ``vectorize`` (``--taylor vectorize``): ``sum_params |sum_entries w * g|``, the
  first-order change of removing the unit's entries of each parameter at once.

``g`` is the gradient of the mean token cross-entropy over all calibration windows
(accumulated over batches in float32), as LLM-Pruner computes it from one batch.

Cost: one forward and one backward pass per calibration batch.  Memory: the backward
needs a gradient for every scored weight (the decoder layers' weights: about the size of
the model again) plus the activations of one batch kept for autograd (they grow with
``batch_size x seq_len x n_layers``).  A float32 model therefore needs about 2x its
weights; an fp16/bf16 model also gets a float32 accumulator of the gradients (about 4x its
half-precision weights).  It is the most memory-hungry initializer: every other one needs
forward passes only.  A model whose weights are offloaded (accelerate) is refused: its
weights exist only during their module's forward and cannot accumulate gradients.  Embeddings and the LM head get no gradient.  ``requires_grad`` and any existing ``.grad``
of the model's parameters are restored afterwards.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, cast

import torch
from pydantic import Field
from torch import nn

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.base import CheckedInitializer, calibration_batches
from pgprune_core.initializers.unit_params import gather_units, layer_unit_sums, unit_parameters
from pgprune_core.interfaces import InitContext
from pgprune_core.model.structure import LayerSite
from pgprune_core.plugin.hookspecs import hookimpl


class TaylorInitializer(CheckedInitializer):
    """LLM-Pruner's first-order Taylor |w * dL/dw| per unit (one backward per batch)."""

    name = "taylor"
    kinds = frozenset({"channel", "head", "attention", "mlp", "layer"})
    needs_calibration = True
    needs_weight_gradients = True

    class Config(InitializerConfig):
        #: calibration windows (LLM-Pruner: 10 examples)
        n_sequences: int = Field(default=10, gt=0)
        #: tokens per window (LLM-Pruner: 64)
        seq_len: int = Field(default=64, gt=1)
        #: windows per forward/backward pass (activation memory for autograd)
        batch_size: int = Field(default=10, gt=0)
        #: param-first: sum |w g|; vectorize: sum over parameters of |sum w g|
        variant: Literal["param-first", "vectorize"] = "param-first"

    def compute(self, ctx: InitContext) -> torch.Tensor:
        config = cast(TaylorInitializer.Config, self.config)
        batches = calibration_batches(ctx, config.n_sequences, config.seq_len, config.batch_size,
                                      shard=True)
        params = unit_parameters(ctx.structure, ctx.layout.kinds)
        # under torchrun each rank back-propagates its share of the windows
        total_rows = int(ctx.ranks.all_reduce_sum(
            torch.tensor([sum(batch.shape[0] for batch in batches)], dtype=torch.float64))[0])
        grads = weight_gradients(ctx.structure.model, params, batches, total_rows)
        grads = {key: ctx.ranks.all_reduce_sum(grad, "summing the weight gradients")
                 for key, grad in grads.items()}

        def score(site: LayerSite, kind: str) -> torch.Tensor:
            def first_order(param: torch.Tensor) -> torch.Tensor:
                product = param.detach().to(torch.float32) * grads[id(param)].to(param.device)
                return product if config.variant == "vectorize" else product.abs()

            return layer_unit_sums(site, kind, first_order,
                                   abs_per_parameter=config.variant == "vectorize")

        return torch.cat([gather_units(ctx.structure, unit_set, partial(score, kind=unit_set.kind))
                          for unit_set in ctx.layout])


def weight_gradients(
    model: nn.Module, params: list[torch.Tensor], batches: list[torch.Tensor],
    total_rows: int | None = None,
) -> dict[int, torch.Tensor]:
    """``{id(param): dL/dparam}`` in float32, L = mean token cross-entropy over all
    ``batches`` (over ``total_rows`` windows when these batches are one rank's share of
    them: the ranks' gradients then sum to the gradient of the mean); only ``params`` get gradients, and the model's ``requires_grad`` flags and
    ``.grad`` attributes are as before when this returns (or raises).

    float32 parameters accumulate in their own ``.grad`` across batches (no copy); others
    are added into a float32 buffer after each backward and their ``.grad`` is freed."""
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    saved_grads = [p.grad for p in all_params]
    accum: dict[int, torch.Tensor] = {}
    if total_rows is None:
        total_rows = sum(batch.shape[0] for batch in batches)
    try:
        for p in all_params:
            p.requires_grad_(False)
            p.grad = None
        for w in params:
            w.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                out = model(input_ids=batch, labels=batch, use_cache=False)
                # every window has the same length, so weighting each batch's mean loss by
                # its share of windows gives the mean over all calibration tokens
                (out.loss * (batch.shape[0] / total_rows)).backward()
                for w in params:
                    if w.dtype == torch.float32 or w.grad is None:
                        continue
                    if id(w) in accum:
                        accum[id(w)].add_(w.grad.to(torch.float32))
                    else:
                        accum[id(w)] = w.grad.to(torch.float32)
                    w.grad = None
        for w in params:
            if w.dtype == torch.float32 and w.grad is not None:
                accum[id(w)] = w.grad
            accum.setdefault(id(w), torch.zeros_like(w, dtype=torch.float32))
    finally:
        for p, flag, grad in zip(all_params, flags, saved_grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
    return accum


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(TaylorInitializer)
