"""Perplexity by the paper's protocol (Sect. 4.1), the one GPTQ, SparseGPT, Wanda and
LLM-Pruner report on WikiText-2.

The evaluation text is tokenized once (documents joined with ``"\\n\\n"``, see
:mod:`pgprune_core.data.tokens`) and cut into non-overlapping windows of ``seq_len``
tokens (128 in the paper; 2048 in its App. A.5); a tail shorter than one window is
dropped.  Each window is scored on its own (no context carried over), every token but its
first is predicted, and the perplexity is ``exp`` of the mean negative log-likelihood over
*all* predicted tokens of all windows (not a mean of per-window perplexities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pgprune_core.errors import DataError
from pgprune_core.model.placement import input_device
from pgprune_core.report.progress import Reporter, SilentReporter


@dataclass(frozen=True)
class Perplexity:
    """The result: ``ppl = exp(nll)``; ``tokens`` predicted tokens in ``windows`` windows."""

    ppl: float
    nll: float
    tokens: int
    windows: int


def windows_of(tokens: torch.Tensor, seq_len: int, max_windows: int | None = None,
               name: str = "evaluation text") -> torch.Tensor:
    """int64 [n, seq_len]: the non-overlapping windows of a token stream (tail dropped)."""
    n = tokens.numel() // seq_len
    if n == 0:
        raise DataError(
            f"{name} has {tokens.numel():,} tokens, fewer than one window of {seq_len}"
        )
    if max_windows is not None:
        n = min(n, max_windows)
    return tokens[: n * seq_len].view(n, seq_len).to(torch.int64)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    seq_len: int = 128,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    max_windows: int | None = None,
    reporter: Reporter | None = None,
    name: str = "evaluation text",
) -> Perplexity:
    """Perplexity of ``model`` on the token stream ``tokens`` (int [total]).

    Logits are upcast to float32 one sequence at a time, so the memory of the float copy
    stays that of one window even for 128k-token vocabularies; the sums are kept in
    float64.  ``max_windows`` scores only the first windows (for quick checks).
    """
    windows = windows_of(tokens, seq_len, max_windows, name)
    if device is None:
        device = input_device(model)
    reporter = reporter or SilentReporter()
    batches = list(torch.split(windows, batch_size))
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in reporter.track(batches, len(batches), f"perplexity {name}"):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            for row in range(batch.shape[0]):
                nll_sum += F.cross_entropy(
                    logits[row, :-1].float(), batch[row, 1:], reduction="sum"
                ).double()
            count += batch.shape[0] * (seq_len - 1)
    finally:
        model.train(was_training)
    nll = float(nll_sum) / count
    return Perplexity(ppl=math.exp(nll) if nll < 709 else math.inf, nll=nll, tokens=count,
                      windows=windows.shape[0])
