"""Training the demo model from scratch, reproducibly, on the CPU.

Two builds on one machine must give byte-identical weights.  On the CPU, PyTorch's
kernels are deterministic for a fixed number of intra-op threads (the thread count decides
how reductions are split), so the build fixes the thread count, seeds its own fork of the
global RNG, turns on ``torch.use_deterministic_algorithms`` (so that a kernel without a
deterministic implementation fails loudly instead of drifting), draws every training
window from one seeded generator, and runs on the CPU even where a GPU exists.  The
caller's thread count, RNG state and determinism flag are restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pgprune_core.demo.recipe import DemoRecipe

#: training losses averaged into the reported final loss (one step's loss is noisy)
FINAL_LOSS_WINDOW = 20


@contextlib.contextmanager
def reproducible_torch(seed: int, threads: int) -> Iterator[None]:
    """Seeded, fixed-thread, deterministic torch for the duration of the block."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)
            torch.set_num_threads(threads_before)


def token_stream(documents: Sequence[str], tokenizer: Any) -> torch.Tensor:
    """All documents as one int64 stream, each ``<s> ... </s>`` (the tokenizer adds ``<s>``)."""
    ids: list[int] = []
    for encoding in tokenizer(list(documents))["input_ids"]:
        ids.extend(encoding)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.int64)


def build_config(recipe: DemoRecipe, tokenizer: Any) -> Any:
    """The ``LlamaConfig`` of the recipe (multi-head attention, untied embeddings, as LLaMA-2)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=recipe.vocab_size,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=recipe.seq_len,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def lr_factor(step: int, recipe: DemoRecipe) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    model: Any
    #: mean training loss of the last FINAL_LOSS_WINDOW steps
    final_loss: float
    #: (step, loss) every ``log_every`` steps, for the provenance
    curve: list[tuple[int, float]]


def train_model(
    recipe: DemoRecipe,
    tokens: torch.Tensor,
    tokenizer: Any,
    track: Callable[[range], Any],
    log_every: int = 25,
) -> TrainResult:
    """Train a fresh model on random windows of ``tokens``; call inside :func:`reproducible_torch`.

    ``track`` wraps the step range (a progress bar).  AdamW with decoupled weight decay on
    the matrices only, gradient clipping at 1, and a warm-up + cosine schedule: the usual
    small-LM recipe, which reaches a good loss in few steps.
    """
    from transformers import LlamaForCausalLM

    if tokens.numel() <= recipe.seq_len:
        raise RuntimeError(f"{tokens.numel()} training tokens cannot fill one window of {recipe.seq_len}")
    model = LlamaForCausalLM(build_config(recipe, tokenizer))
    model.train()
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": recipe.weight_decay},
         {"params": vectors, "weight_decay": 0.0}],
        lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    offsets_range = tokens.numel() - recipe.seq_len
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    for step in track(range(recipe.steps)):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, recipe)
        starts = torch.randint(0, offsets_range + 1, (recipe.batch_size,), generator=generator)
        batch = torch.stack([tokens[s : s + recipe.seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == recipe.steps:
            curve.append((step + 1, round(losses[-1], 4)))
    model.eval()
    final = sum(losses[-FINAL_LOSS_WINDOW:]) / len(losses[-FINAL_LOSS_WINDOW:])
    return TrainResult(model=model, final_loss=final, curve=curve)


@torch.no_grad()
def perplexity(model: Any, tokens: torch.Tensor, seq_len: int, batch_size: int = 16) -> float:
    """Perplexity over non-overlapping windows of ``tokens`` (the tail that fills no window is dropped)."""
    n = tokens.numel() // seq_len
    if n == 0:
        raise RuntimeError(f"{tokens.numel()} tokens cannot fill one window of {seq_len}")
    windows = tokens[: n * seq_len].view(n, seq_len)
    total = 0.0
    for start in range(0, n, batch_size):
        batch = windows[start : start + batch_size]
        total += float(model(input_ids=batch, labels=batch).loss) * batch.shape[0]
    return math.exp(total / n)


def unigram_perplexity(train: torch.Tensor, held_out: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of add-one-smoothed token frequencies of ``train`` on ``held_out``: the
    bar a language model must clear to have learnt anything beyond word counts."""
    counts = torch.bincount(train, minlength=vocab_size).to(torch.float64) + 1.0
    log_probs = (counts / counts.sum()).log()
    return math.exp(-float(log_probs[held_out].mean()))
