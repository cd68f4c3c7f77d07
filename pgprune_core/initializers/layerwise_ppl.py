"""``layerwise-ppl``: the calibration loss of the model with each decoder layer removed
(Shortened LLaMA's PPL criterion, Kim et al. 2024; the paper's layer initializer).

Score of layer l = mean token negative log-likelihood on the calibration windows when
layer l alone is replaced by the identity (its residual stream passes through); a layer
whose removal hurts little scores low and is cut first.  ``metric: ppl`` returns
``exp`` of it, Shortened LLaMA's number: the ranking is the same, but sigmoid-norm, which
z-scores the values, sees one catastrophic layer (often the first) as a huge outlier in
perplexity and squeezes the others together, so ``nll`` is the default.

Cost: ``n_layers`` masked forward passes over the calibration windows, run as one batched
call per window batch through the run's loss oracle (one is built when the context has
none).  No autograd; memory of ``n_layers x batch_size`` sequences' activations and
logits, split by the oracle's ``max_rows`` (``--training.max_rows``).
"""

from __future__ import annotations

from typing import Literal, cast

import torch
from pydantic import Field

from pgprune_core.config.base import InitializerConfig
from pgprune_core.initializers.base import CheckedInitializer, calibration_batches
from pgprune_core.interfaces import InitContext
from pgprune_core.model.masking import LossOracle
from pgprune_core.plugin.hookspecs import hookimpl


class LayerwisePplInitializer(CheckedInitializer):
    """Loss with each layer removed (Shortened LLaMA's PPL criterion): layers only."""

    name = "layerwise-ppl"
    kinds = frozenset({"layer"})
    needs_calibration = True

    class Config(InitializerConfig):
        #: calibration windows (Shortened LLaMA: 10)
        n_sequences: int = Field(default=10, gt=0)
        #: tokens per window (Shortened LLaMA: 128)
        seq_len: int = Field(default=128, gt=1)
        #: windows evaluated together (each under all n_layers masks)
        batch_size: int = Field(default=8, gt=0)
        #: nll: mean token NLL; ppl: its exp (same ranking, see the module docstring)
        metric: Literal["nll", "ppl"] = "nll"

    @torch.no_grad()
    def compute(self, ctx: InitContext) -> torch.Tensor:
        config = cast(LayerwisePplInitializer.Config, self.config)
        oracle = ctx.oracle
        if oracle is None:
            oracle = LossOracle(ctx.model, ctx.structure, ctx.layout, ctx.granularities)
        n = len(ctx.layout)  # layer units only (check_context refused other kinds)
        masks = 1.0 - torch.eye(n)  # row l: every layer kept but l
        total = torch.zeros(n, dtype=torch.float64)
        rows = 0
        for batch in calibration_batches(ctx, config.n_sequences, config.seq_len, config.batch_size):
            losses = oracle.losses(batch, masks.to(batch.device))
            total += losses.detach().to("cpu", torch.float64) * batch.shape[0]
            rows += batch.shape[0]
        nll = total / rows
        return nll.exp() if config.metric == "ppl" else nll


@hookimpl
def pgprune_register_initializers(register):  # type: ignore[no-untyped-def]
    register(LayerwisePplInitializer)
