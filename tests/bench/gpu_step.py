"""Benchmark: one ``reinforce`` step on a LLaMA-2-7B-shaped model on a GPU.

The paper (REFERENCE.md, "Published numbers") prunes LLaMA-2-7B channels + heads in 1.76 h
for one epoch of 120k segments (15,000 steps of 8 x 128 tokens) on one A100, with 18.2-19.5
GB of GPU memory.  This script holds the project's step against those numbers:

- model: a LLaMA with LLaMA-2-7B's shape (hidden 4096, 32 layers, 32 heads, intermediate
  11008, vocab 32000; 6.74 B parameters) and RANDOM weights (std 0.02, transformers' own
  init), built in-process directly on the GPU in bfloat16 (``--dtype``) -- no download; the
  time and memory of a step do not depend on what the weights are;
- step: exactly the step of ``tests/bench/estimator_cost.py`` (it imports that script's
  helpers): batch 8 x 128 random token ids, channel + head units, every keep-probability 0.5
  under the ``per-type`` budget at prune rate 0.5, N_s = 2, the real ``reinforce`` plugin
  with the ``LossOracle`` and the ``bisection`` projector;
- time: median over ``--steps`` rounds (after ``--warmup`` rounds) of one ``reinforce``
  step, of N_s dense 8-row evaluations (``two_dense_s``), of one dense 16-row evaluation
  (``dense_n2_s``) and of one ``gumbel`` step (``--no-gumbel`` leaves it out), interleaved,
  with ``torch.cuda.synchronize`` around each; extrapolated to 15,000 steps;
- memory: ``torch.cuda.max_memory_allocated`` (tensors, weights included: the paper's
  kind of number) and ``max_memory_reserved`` (the caching allocator's pool, closer to what
  ``nvidia-smi`` shows), reset before one call each of plain inference (a dense forward of
  the 16 rows under ``torch.inference_mode`` + the loss), a ``reinforce`` step and a
  ``gumbel`` step.

The paper's GPU is an A100; the one this runs on may be faster (an H100/H200) or slower, so
the hours are compared with the GPU's name beside them.  Without CUDA it prints one line of
JSON with ``"skipped"`` and exits 0.  ``--tiny`` runs the same code path on a tiny config
(on CUDA when present, else on the CPU) to test the script; its numbers mean nothing.

    python tests/bench/gpu_step.py [--steps 20] [--warmup 3] [--dtype bfloat16] [--no-gumbel]
    python tests/bench/gpu_step.py --tiny          # exercises the code path on a CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pgprune_core.evaluation.memory import PeakMemory
from pgprune_core.plugin.registry import estimators

#: the paper's LLaMA-2-7B numbers (REFERENCE.md): one epoch = 120k segments / batch 8
PAPER_STEPS, PAPER_HOURS, PAPER_PEAK_GB, PAPER_GPU = 15_000, 1.76, [18.2, 19.5], "A100"
LLAMA2_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "max_position_embeddings": 4096, "rms_norm_eps": 1e-5}
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5}


def _estimator_cost() -> Any:
    """The sibling script ``estimator_cost.py``, whose step this benchmark runs."""
    path = Path(__file__).resolve().with_name("estimator_cost.py")
    spec = importlib.util.spec_from_file_location("estimator_cost", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["estimator_cost"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def build_model(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    """A LLaMA of ``shape`` with random weights, allocated and initialised on ``device``
    in ``dtype`` (no float32 copy on the host)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def gb(n_bytes: int) -> float:
    return round(n_bytes / 1e9, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--no-gumbel", action="store_true", help="leave the gumbel step out")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny config (on the CPU without CUDA): tests the code path")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print(json.dumps({"benchmark": "gpu_step", "skipped":
                          f"CUDA is not available (torch {torch.__version__}); run it on a "
                          f"machine with an NVIDIA GPU, or pass --tiny to test the code path"}))
        return 0
    ec = _estimator_cost()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    shape = TINY if args.tiny else LLAMA2_7B

    started = time.perf_counter()
    model = build_model(shape, device, dtype)
    ec.sync(device)
    build_s = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())

    setup = ec.Setup.build(model, ("channel", "head"), device)
    batch = ec.make_batch(model.config.vocab_size)
    fns: dict[str, Callable[[torch.Tensor], Any]] = {
        "reinforce": setup.stepper("reinforce", n_samples=ec.N_SAMPLES),
        "two_dense": lambda b: [setup.dense(b) for _ in range(ec.N_SAMPLES)],
        "dense_n2": lambda b: setup.dense(b, rows=ec.N_SAMPLES),
    }
    skipped: dict[str, str] = {}
    if args.no_gumbel:
        skipped["gumbel"] = "--no-gumbel"
    elif "gumbel" not in estimators():
        skipped["gumbel"] = "estimator 'gumbel' is not installed"
    else:
        fns["gumbel"] = setup.stepper("gumbel", n_samples=ec.N_SAMPLES)

    for _ in range(args.warmup):
        for fn in fns.values():
            fn(batch)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.steps):
        for name, fn in fns.items():
            times[name].append(ec.timed(lambda fn=fn: fn(batch), device))
    med = {name: statistics.median(values) for name, values in times.items()}

    memory: dict[str, Any] = {"method": "", "weights_bytes": weights}
    measured: list[tuple[str, Callable[[torch.Tensor], Any]]] = [
        ("inference", setup.inference), ("reinforce", fns["reinforce"])]
    if "gumbel" in fns:
        measured.append(("gumbel", fns["gumbel"]))
    for name, fn in measured:
        with PeakMemory(device) as peak:
            fn(batch)
        memory["method"] = peak.method
        memory[f"{name}_peak_bytes"] = int(peak.peak_bytes)
        memory[f"{name}_rise_bytes"] = int(peak.delta_bytes)
        if cuda:
            memory[f"{name}_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    memory["ratio_reinforce_vs_inference_peak"] = round(
        memory["reinforce_peak_bytes"] / memory["inference_peak_bytes"], 3)
    if "gumbel_peak_bytes" in memory:
        memory["ratio_gumbel_vs_reinforce_peak"] = round(
            memory["gumbel_peak_bytes"] / memory["reinforce_peak_bytes"], 3)
    memory["reinforce_peak_gb"] = gb(memory["reinforce_peak_bytes"])

    step_s = med["reinforce"]
    hours = step_s * PAPER_STEPS / 3600
    results: dict[str, Any] = {
        "benchmark": "gpu_step",
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "model": {**shape, "params": params, "random_weights": True,
                  "attn_implementation": getattr(model.config, "_attn_implementation", None)},
        "batch": [ec.BATCH, ec.LENGTH],
        "n_samples": ec.N_SAMPLES,
        "units": {u.kind: len(u) for u in setup.layout},
        "build_s": round(build_s, 2),
        "steps": args.steps,
        **{f"{name}_s": round(value, 4) for name, value in med.items()},
        "ratio_reinforce_vs_two_dense": round(step_s / med["two_dense"], 3),
        "ratio_reinforce_vs_dense_n2": round(step_s / med["dense_n2"], 3),
        "spread_s": {name: [round(min(v), 4), round(max(v), 4)] for name, v in times.items()},
        "memory": memory,
        "extrapolated": {
            "hours_per_15k_steps": round(hours, 3),
            "paper_hours_per_15k_steps": PAPER_HOURS,
            "ratio_to_paper": round(hours / PAPER_HOURS, 3),
            "peak_gb": memory["reinforce_peak_gb"],
            "paper_peak_gb": PAPER_PEAK_GB,
            "paper_gpu": PAPER_GPU,
        },
    }
    if "gumbel" in med:
        results["ratio_reinforce_vs_gumbel"] = round(step_s / med["gumbel"], 3)
    if skipped:
        results["skipped_variants"] = skipped
    if args.tiny:
        results["note"] = "tiny config: tests the code path only; the numbers mean nothing"
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
