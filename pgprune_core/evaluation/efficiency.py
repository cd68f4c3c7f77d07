"""What pruning buys: parameters, bytes, peak memory, latency and generation speed.

The paper's App. A.5 (Table A2) compares pruned models by #params, memory and latency of a
forward pass (batch 4 x 2048 tokens on an A100).  The same quantities are measured here,
at a configurable shape, so that dense and pruned models of one run are compared under
identical conditions.  Timings are medians of several repeats after warm-up, with the
device synchronised around each repeat (CUDA kernels are asynchronous).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pgprune_core.evaluation.memory import DevicePeaks
from pgprune_core.model.placement import parameter_devices

#: file name endings that hold weights (a model directory's size on disk is theirs)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class ParamCount:
    """``total`` parameters (shared ones once) and those outside the token embeddings."""

    total: int
    non_embedding: int


def count_parameters(model: nn.Module) -> ParamCount:
    """Parameters of ``model``.  ``non_embedding`` leaves out the input embedding and an
    output embedding (LM head) that is a separate matrix, the convention of scaling-law
    papers: the embeddings' size depends on the vocabulary, not on what pruning removes."""
    total = sum(p.numel() for p in model.parameters())
    embeddings: dict[int, int] = {}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            embeddings[id(weight)] = weight.numel()
    return ParamCount(total=total, non_embedding=total - sum(embeddings.values()))


def model_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers (the weights' share of memory)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def size_on_disk(path: Path) -> int:
    """Bytes of the weight files in a saved model directory (or of one file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def random_tokens(model: Any, batch_size: int, length: int, seed: int,
                  device: torch.device) -> torch.Tensor:
    """Seeded token ids in the vocabulary of ``model`` (a transformers causal LM); the
    content does not change timing."""
    embeddings = model.get_input_embeddings()
    vocab = int(getattr(embeddings, "num_embeddings", 0) or model.config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch_size, length), generator=generator).to(device)


@torch.no_grad()
def forward_stats(model: nn.Module, device: torch.device, *, batch_size: int, seq_len: int,
                  repeats: int, warmup: int, seed: int) -> dict[str, Any]:
    """Median latency and peak memory of one forward pass at ``batch_size x seq_len``:
    ``peak_memory_bytes`` on ``device`` (where the input goes), ``peak_memory_by_device``
    on every device the model uses."""
    batch = random_tokens(model, batch_size, seq_len, seed, device)

    def forward() -> None:
        model(input_ids=batch, use_cache=False)

    times = timed(forward, device, repeats, warmup)
    with DevicePeaks([device, *parameter_devices(model)]) as peaks:
        forward()
    peak = peaks.meter(device)
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "repeats": repeats,
        "latency_s": statistics.median(times),
        "latency_min_s": min(times),
        "peak_memory_bytes": peak.peak_bytes,
        "peak_memory_delta_bytes": peak.delta_bytes,
        "memory_method": peak.method,
        # every CUDA device holding the model's weights (tensors) and "cpu" (process RSS)
        "peak_memory_by_device": peaks.peak_bytes,
    }


@torch.no_grad()
def generation_stats(model: Any, device: torch.device, *, batch_size: int,
                     prompt_len: int, new_tokens: int, repeats: int, seed: int,
                     pad_token_id: int | None) -> dict[str, Any]:
    """Median tokens per second of greedy generation of exactly ``new_tokens`` tokens
    (prefill included, KV cache on, EOS ignored by ``min_new_tokens``)."""
    prompt = random_tokens(model, batch_size, prompt_len, seed, device)

    def generate() -> None:
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=pad_token_id,
        )

    times = timed(generate, device, repeats, warmup=1)
    return {
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "tokens_per_s": batch_size * new_tokens / statistics.median(times),
    }


#: ratio name -> path of the value inside one side of metrics.json
RATIO_KEYS: dict[str, tuple[str, ...]] = {
    "params": ("params",),
    "params_non_embedding": ("params_non_embedding",),
    "model_bytes": ("model_bytes",),
    "disk_bytes": ("disk_bytes",),
    "latency_s": ("forward", "latency_s"),
    "peak_memory_bytes": ("forward", "peak_memory_bytes"),
    "tokens_per_s": ("generation", "tokens_per_s"),
}


def _lookup(metrics: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def peak_memory_comparable(*sides: Mapping[str, Any]) -> bool:
    """Whether forward peak memories can be compared: only CUDA's, which count tensors.
    A process's RSS also holds whatever the process allocated before (a dense model
    measured first, freed pages the allocator keeps), so a pruned/dense RSS ratio misleads."""
    return all((side.get("forward") or {}).get("memory_method") == "cuda" for side in sides)


def ratios(metrics: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, float]:
    """``metrics / reference`` for every efficiency quantity both hold (pruned / dense);
    peak memory only where :func:`peak_memory_comparable`."""
    out = {}
    for name, path in RATIO_KEYS.items():
        if name == "peak_memory_bytes" and not peak_memory_comparable(metrics, reference):
            continue
        mine, theirs = _lookup(metrics, path), _lookup(reference, path)
        if mine is not None and theirs:
            out[name] = mine / theirs
    return out
