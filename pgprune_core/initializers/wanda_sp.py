"""``wanda-sp``: Wanda's |weight| x input-norm metric aggregated per structure (FLAP's
``prune_wanda_sp``, An et al. 2023; the initializer of the paper's main results).

For the input columns j of ``o_proj`` and ``down_proj``: n_j = mean over calibration
tokens of x_j^2 (x = the layer's input), S_ij = |W_ij| sqrt(n_j).  Then

- channel j of an MLP: mean_i S_ij over the rows of ``down_proj`` (its column j);
- head h: sum over the ``head_dim`` columns of the head of mean_i S_ij (``o_proj``);
  a KV group (GQA) scores the mean of its query heads (the authors' code).

Statistics come from the *unpruned* model (one score per unit for a global ranking; FLAP
itself prunes layer i before measuring layer i+1, which a one-shot score cannot do).
Layers are not scored: the metric has no layer-level form (use ``layerwise-ppl``).

Cost: one forward pass over the calibration set, run layer by layer
(:mod:`.activations`).  Memory beyond the weights: the hidden states of all calibration
sequences (``n_sequences x seq_len x hidden_size`` in the model's dtype; 1 GiB in fp16 for
the authors' 128 x 1024 on a 4096-wide model) plus one batch's activations inside one layer,
and, where the attention needs an explicit mask (sliding windows, eager attention), that
mask for every batch (``n_sequences x seq_len^2`` booleans: 128 MiB for 128 x 1024).
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
from pydantic import Field

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.activations import InputSquares, collect_input_squares
from pgprune_core.initializers.base import CheckedInitializer, calibration_batches
from pgprune_core.initializers.unit_params import gather_units
from pgprune_core.interfaces import InitContext
from pgprune_core.model.placement import onloaded
from pgprune_core.model.structure import LayerSite
from pgprune_core.plugin.hookspecs import hookimpl


class WandaSpInitializer(CheckedInitializer):
    """Wanda-sp: |W| x sqrt(mean input^2) per channel and head (FLAP, the paper's init)."""

    name = "wanda-sp"
    kinds = frozenset({"channel", "head"})
    needs_calibration = True

    class Config(InitializerConfig):
        #: calibration windows (the authors: 128 C4 sequences)
        n_sequences: int = Field(default=128, gt=0)
        #: tokens per window (the authors: 1024; smaller is fine for small models or CPU)
        seq_len: int = Field(default=1024, gt=1)
        #: windows pushed through a layer at once (memory of one layer's activations)
        batch_size: int = Field(default=8, gt=0)

    def compute(self, ctx: InitContext) -> torch.Tensor:
        config = cast(WandaSpInitializer.Config, self.config)
        kinds = ctx.layout.kinds
        batches = calibration_batches(ctx, config.n_sequences, config.seq_len, config.batch_size,
                                      shard=True)

        def targets(site: LayerSite) -> list[torch.nn.Module]:
            return [site.attention.o_proj if kind == "head" else site.dense_mlp().down_proj for kind in kinds]

        stats = collect_input_squares(ctx.structure, batches, targets, ctx.ranks)
        by_layer = {site.index: dict(zip(kinds, stats[pos], strict=True))
                    for pos, site in enumerate(ctx.structure.layers)}

        def score(site: LayerSite, kind: str) -> torch.Tensor:
            scorer = head_scores if kind == "head" else channel_scores
            return scorer(site, by_layer[site.index][kind])

        return torch.cat([gather_units(ctx.structure, unit_set, partial(score, kind=unit_set.kind))
                          for unit_set in ctx.layout])


def _column_metric(linear: torch.nn.Linear, inputs: InputSquares) -> torch.Tensor:
    """mean_i |W_ij| sqrt(n_j): one value per input column j."""
    norms = inputs.mean().sqrt()
    with onloaded(linear):
        weight = linear.weight.detach().to(torch.float32).abs()
        return (weight * norms.to(weight.device)).mean(0)


def channel_scores(site: LayerSite, inputs: InputSquares) -> torch.Tensor:
    """float32 [intermediate_size]: Wanda-sp score of each MLP channel."""
    return _column_metric(site.dense_mlp().down_proj, inputs)


def head_scores(site: LayerSite, inputs: InputSquares) -> torch.Tensor:
    """float32 [n_kv_heads]: Wanda-sp score of each head, averaged over each KV group."""
    att = site.attention
    per_head = _column_metric(att.o_proj, inputs).reshape(att.n_heads, att.head_dim).sum(1)
    return per_head.reshape(att.n_kv_heads, att.group_size).mean(1)


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(WandaSpInitializer)
