"""The layer-by-layer calibration pass and input statistics of linear layers (Wanda-sp).

The calibration sequences are embedded once; then their hidden states are pushed through
one decoder layer at a time (the procedure of FLAP's ``prune_wanda_sp`` and of SparseGPT /
Wanda), with forward pre-hooks collecting statistics of the inputs of chosen linear layers.
Only the current layer computes; the hidden states of all calibration sequences are kept
(in the model's dtype, overwritten in place layer after layer).

A decoder layer needs more than its hidden states: rotary position embeddings, the causal
mask (which may differ per layer, e.g. sliding-window layers), position ids.  Rather than
rebuilding them, which depends on the architecture and the transformers version, each
layer's ``forward`` is temporarily replaced by a recorder and the model is run once per
batch: the recorders store exactly the arguments the model passes to each layer and hand
the hidden states on unchanged, and the last one stops the forward before the final norm
and the LM head.  The layers then run with those recorded arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from pgprune_core.model.structure import LayerSite, ModelStructure
from pgprune_core.parallel import SINGLE, Ranks

#: positional arguments after the hidden states, and keyword arguments, of one layer call
Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass
class InputSquares:
    """Running per-column sum of squared inputs of a linear layer, and the token count.

    ``mean()`` is n_j = mean over calibration tokens of x_j^2 (Wanda's input norm, up to
    the constant factor FLAP divides by: sequences instead of tokens)."""

    total: torch.Tensor | None = None
    tokens: int = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        squares = rows.square().sum(0)
        self.total = squares if self.total is None else self.total + squares
        self.tokens += rows.shape[0]

    def summed_over(self, ranks: Ranks, width: int) -> None:
        """Make the statistics those of all ranks' inputs together (``width``: the
        module's input features, for a rank that saw no inputs)."""
        if not ranks.distributed:
            return
        total = self.total if self.total is not None else torch.zeros(width, dtype=torch.float32)
        self.total = ranks.all_reduce_sum(total, "summing the calibration statistics")
        self.tokens = int(ranks.all_reduce_sum(torch.tensor([self.tokens], dtype=torch.float64))[0])

    def mean(self) -> torch.Tensor:
        if self.total is None or self.tokens == 0:
            raise RuntimeError("no inputs were recorded")
        return self.total / self.tokens


@dataclass
class _Batch:
    """One calibration batch: its hidden states and, per layer position, the call arguments."""

    hidden: torch.Tensor
    calls: dict[int, Call] = field(default_factory=dict)


class _Stop(Exception):
    """Raised by the last recorder: the rest of the model's forward is not needed."""


@contextmanager
def _recording(layers: Sequence[nn.Module], batch: _Batch) -> Iterator[None]:
    """Replace each layer's ``forward`` by a recorder of its arguments (restored after)."""
    saved = [layer.__dict__.get("forward") for layer in layers]
    last = len(layers) - 1

    def recorder(index: int) -> Callable[..., Any]:
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if index == 0:
                batch.hidden = hidden_states
            batch.calls[index] = (args, kwargs)
            if index == last:
                raise _Stop
            return hidden_states

        return forward

    try:
        for index, layer in enumerate(layers):
            layer.forward = recorder(index)  # type: ignore[method-assign]
        yield
    finally:
        for layer, previous in zip(layers, saved, strict=True):
            if previous is None:
                del layer.forward
            else:
                layer.forward = previous  # type: ignore[method-assign]


def _capture(structure: ModelStructure, input_ids: torch.Tensor) -> _Batch:
    batch = _Batch(hidden=torch.empty(0))
    layers = [site.module for site in structure.layers]
    with _recording(layers, batch), suppress(_Stop):
        structure.model(input_ids=input_ids, use_cache=False)
    if len(batch.calls) != len(layers):
        raise RuntimeError(
            f"the model called {len(batch.calls)} of its {len(layers)} decoder layers; "
            f"the layer-by-layer pass cannot follow its forward"
        )
    return batch


@torch.no_grad()
def collect_input_squares(
    structure: ModelStructure,
    batches: Sequence[torch.Tensor],
    modules: Callable[[LayerSite], Sequence[nn.Module]],
    ranks: Ranks = SINGLE,
) -> list[list[InputSquares]]:
    """``result[i][k]``: statistics of the inputs of ``modules(layer i)[k]`` over all
    ``batches`` (token ids [B, T]), computed layer by layer on the unpruned model; under
    ``torchrun``, ``batches`` are this rank's share and the statistics those of all ranks."""
    captured = [_capture(structure, input_ids) for input_ids in batches]
    results: list[list[InputSquares]] = []
    for position, site in enumerate(structure.layers):
        targets = list(modules(site))
        stats = [InputSquares() for _ in targets]
        handles = [
            module.register_forward_pre_hook(lambda _m, inputs, s=s: s.add(inputs[0]))
            for module, s in zip(targets, stats, strict=True)
        ]
        try:
            for batch in captured:
                args, kwargs = batch.calls[position]
                out = site.module(batch.hidden, *args, **kwargs)
                batch.hidden = out[0] if isinstance(out, tuple) else out
                del batch.calls[position]  # this layer's mask is no longer needed
        finally:
            for handle in handles:
                handle.remove()
        for module, stat in zip(targets, stats, strict=True):
            stat.summed_over(ranks, cast(nn.Linear, module).in_features)
        results.append(stats)
    return results
