"""Benchmark: what one estimator step costs, in time and in memory.

Setting: a batch of 8 x 128 tokens (random ids: the cost does not depend on the text),
channel + head units (layers too where said), every keep-probability at 0.5 under the
``per-type`` budget at a prune rate of 0.5 (a feasible start: each kind's constraint is met
with equality), N_s = 2 masks per step.  A step is what ``OptimisationLoop`` runs: one call of
the real plugin object's ``Estimator.step(StepContext)`` with the real ``LossOracle``, the
``bisection`` projector and a ``BernoulliPolicy`` -- sampling, the masked batched forward,
the baseline, the gradient and the projection.  ``total_steps`` is 15,000 (the paper's run).

Speed, on the main model (the shared proxy LLaMA when ``../shared`` exists, else a random
LLaMA of the same shape), medians over ``--repeats`` rounds after one warm-up round, the
variants interleaved within a round so slow drifts of a shared machine hit all alike:

- ``two_dense_s``: N_s dense evaluations of the batch (``LossOracle.losses`` with an all-ones
  mask: the plain forward + cross-entropy, 8 rows each, nothing installed);
  ``dense_n2_s``: one dense evaluation of the batch repeated N_s times (16 rows).
- ``reinforce_s``: one ``reinforce`` step.  Overhead ratio ``reinforce_s / two_dense_s``,
  target <= 1.10 (the step costs no more than the forwards it needs).  The oracle runs
  with its default ``skip_pruned="auto"`` (pruned channels and heads not computed);
  ``reinforce_masked_s`` is the same step with ``skip_pruned="off"`` (every row computes
  every unit, masked): ``reinforce_s / two_dense_s`` at the start's 50 % target <= 0.75.
  ``reinforce_oracle_s``: the part of the step spent inside ``oracle.losses``; the rest
  (``reinforce_outside_oracle_s``) is sampling, baseline, gradient and projection.
- ``gumbel_s``: one ``gumbel`` step, same n_samples (relaxed masks, forward with autograd,
  backward through the frozen model to the mask logits).  ``reinforce_s / gumbel_s``,
  the target <= 0.4.
- ``ppo_s``: one ``ppo`` step with n_samples = 2 (and its default 4 epochs).
- ``layers_half_s`` / ``layers_on_s``: a ``reinforce`` step over channel + head + layer units
  with every layer's keep-probability at 0.5 (each mask drops about half the layers; rows
  whose layer is off are not computed) against the same step with the layers fixed on.

Cost growth: ``two_dense_s``, ``reinforce_s`` and ``gumbel_s`` for random-weight LLaMAs of
increasing size (4 layers / hidden 128, 8 / 512, 12 / 768, vocab 4096) next to the main
model, with their parameter counts.

Memory: every (model, variant) is measured in a FRESH subprocess, so that nothing freed by an
earlier variant (or by loading the model) is reused and hidden.  The child builds the model
and the step, runs the same variant once on a 1 x 8 batch (lazy initialisation), then wraps
ONE full call in ``pgprune_core.evaluation.memory.PeakMemory``:

- CUDA: ``max_memory_allocated`` (tensors only, weights included), reset before the call.
- CPU: the process resident set size sampled every 1 ms by a thread; ``peak_rss_bytes`` is
  the absolute peak (weights, Python, torch and transformers included) and ``rise_bytes`` the
  peak minus the RSS at the start of the call (what the call itself added: activations,
  logits, masks, autograd's saved tensors).  The child runs with glibc's
  ``MALLOC_MMAP_THRESHOLD_=65536`` (fixed, not adaptive) and a ``malloc_trim`` before the call,
  so blocks of 64 KiB or more go straight back to the OS when freed and the RSS follows the
  live tensors instead of the allocator's cache.  A temporary that lives for less than the
  sampling interval can be missed (the cross-entropy's full-size ``logsumexp`` temporary is
  such a one), so a single CPU number is a lower bound; the reported value is the MAXIMUM
  over the ``--memory-repeats`` children of a variant (sampling can only miss, never add).

The variants: ``inference`` (plain inference: one dense forward of the N_s x 8 = 16 rows
under ``torch.inference_mode`` + the per-row loss, what the oracle computes), ``reinforce``
(one step) and ``gumbel`` (one step).  Ratios are given on the absolute peaks (what the
paper's GPU table counts) and on the rises (the stricter view on CPU, where the absolute
number is diluted by ~0.4 GB of libraries); ``weights_bytes`` is printed beside them.

Prints one JSON document; ``docs/benchmarks.md`` records the numbers.

    python tests/bench/estimator_cost.py [--repeats 5] [--memory-repeats 3] [--threads 1]
                                         [--variants two_dense,reinforce,...] [--sizes ...]
                                         [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _proxy import PROXY_MODEL

from pgprune_core import StepContext
from pgprune_core.evaluation.memory import PeakMemory
from pgprune_core.model.masking import LossOracle, token_nll_sums
from pgprune_core.model.structure import UnitLayout
from pgprune_core.optim.budget import Budget
from pgprune_core.optim.policy import BernoulliPolicy
from pgprune_core.plugin.registry import adapters, estimators, granularities, projectors

BATCH, LENGTH, N_SAMPLES, RATE, START_PROB = 8, 128, 2, 0.5, 0.5
#: the paper's run length (one epoch of 120k segments in batches of 8)
TOTAL_STEPS = 15_000

#: random-weight LLaMAs for the cost growth: (layers, hidden, heads, intermediate)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "llama-4L-128h": (4, 128, 4, 344),
    "llama-8L-512h": (8, 512, 8, 1376),
    "llama-12L-768h": (12, 768, 12, 2048),
}
#: stands in for the proxy (same shape, random weights) when ../shared is absent
PROXY_SHAPE = (6, 256, 8, 688)
VOCAB = 4096
MAIN_VARIANTS = ("two_dense", "dense_n2", "reinforce", "reinforce_masked", "gumbel", "ppo",
                 "layers_half", "layers_on")
SIZE_VARIANTS = ("two_dense", "reinforce", "gumbel")
MEMORY_VARIANTS = ("inference", "reinforce", "gumbel")


# -- models ---------------------------------------------------------------------------------


def random_llama(shape: tuple[int, int, int, int], vocab: int, device: torch.device,
                 dtype: torch.dtype) -> Any:
    """A LLaMA with random weights (timing does not depend on what the weights are)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, heads, intermediate = shape
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=512)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def load_model(name: str, device: torch.device, dtype: torch.dtype) -> tuple[str, Any]:
    """``main`` (the proxy, or its random stand-in) or one of :data:`SIZES`."""
    if name == "main":
        if PROXY_MODEL.is_dir():
            from transformers import LlamaForCausalLM

            model = LlamaForCausalLM.from_pretrained(PROXY_MODEL, dtype=dtype)
            model = model.to(device).eval()  # type: ignore[arg-type]
            return "proxy-llama-7m", model
        return "llama-6L-256h (proxy shape, random weights)", random_llama(PROXY_SHAPE, VOCAB, device, dtype)
    return f"{name} (random weights)", random_llama(SIZES[name], VOCAB, device, dtype)


# -- one estimator step, as the loop runs it ------------------------------------------------


class TimedOracle:
    """The run's ``LossOracle``, counting the seconds spent inside it."""

    def __init__(self, oracle: LossOracle, device: torch.device) -> None:
        self.inner = oracle
        self.device = device
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _timed(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        sync(self.device)
        start = time.perf_counter()
        out = fn(*args)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out

    def losses(self, batch: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.losses, batch, masks)

    def loss(self, batch: torch.Tensor, soft_masks: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.loss, batch, soft_masks)


@dataclass
class Setup:
    """A model prepared for estimator steps over the units of ``kinds``."""

    model: Any
    structure: Any
    layout: UnitLayout
    oracle: TimedOracle
    constraints: list[Any]
    device: torch.device

    @classmethod
    def build(cls, model: Any, kinds: tuple[str, ...], device: torch.device,
              skip_pruned: str = "auto") -> Setup:
        structure = adapters()["llama"]().describe_model(model)
        registered = granularities()
        chosen = {kind: registered[kind]() for kind in kinds}
        layout = UnitLayout([g.units(structure) for g in chosen.values()])
        oracle = TimedOracle(LossOracle(model, structure, layout, chosen,
                                        skip_pruned=skip_pruned), device)
        constraints = Budget("per-type", layout, RATE).constraints()
        return cls(model, structure, layout, oracle, constraints, device)

    def dense(self, batch: torch.Tensor, rows: int = 1) -> torch.Tensor:
        """The loss of the unmasked model on ``batch`` repeated ``rows`` times."""
        return self.oracle.inner.losses(batch, torch.ones(rows, len(self.layout)))

    def stepper(self, estimator_name: str, *, layers_fixed: bool = False,
                **config: Any) -> Callable[[torch.Tensor], Any]:
        """``fn(batch)``: one step of a fresh estimator on its own policy and generator."""
        cls = estimators()[estimator_name]
        estimator = cls(cls.Config(**config))  # type: ignore[call-arg]
        fixed = torch.zeros(len(self.layout), dtype=torch.bool)
        if layers_fixed:
            fixed[self.layout.offsets["layer"]] = True
        policy = BernoulliPolicy(torch.full((len(self.layout),), START_PROB, dtype=torch.float64),
                                 fixed=fixed)
        projector = projectors()["bisection"]()
        generator = torch.Generator().manual_seed(0)
        counter = itertools.count()
        estimator.start(policy, TOTAL_STEPS)

        def project(z: torch.Tensor) -> torch.Tensor:
            return projector.project(z, self.constraints)

        def step(batch: torch.Tensor) -> Any:
            stats = estimator.step(StepContext(
                policy=policy, batch=batch, oracle=self.oracle, project=project,
                step=next(counter), total_steps=TOTAL_STEPS, generator=generator))
            if stats.skipped:
                raise RuntimeError(f"{estimator_name} skipped a step (non-finite loss)")
            return stats

        return step

    def inference(self, batch: torch.Tensor) -> torch.Tensor:
        """Plain inference on the N_s x 8 rows: forward + per-row loss, no masks, no autograd."""
        tokens = batch.to(self.oracle.inner.device).repeat(N_SAMPLES, 1)
        with torch.inference_mode():
            logits = self.model(input_ids=tokens, use_cache=False).logits
            return token_nll_sums(logits, tokens)


def variant_fn(name: str, model: Any, device: torch.device) -> tuple[Callable[[torch.Tensor], Any], Setup]:
    """The callable of variant ``name`` (of the speed or memory list) on ``model``."""
    if name in ("layers_half", "layers_on"):
        setup = Setup.build(model, ("channel", "head", "layer"), device)
        return setup.stepper("reinforce", n_samples=N_SAMPLES, layers_fixed=name == "layers_on"), setup
    if name == "reinforce_masked":
        setup = Setup.build(model, ("channel", "head"), device, skip_pruned="off")
        return setup.stepper("reinforce", n_samples=N_SAMPLES), setup
    setup = Setup.build(model, ("channel", "head"), device)
    if name == "two_dense":
        return (lambda batch: [setup.dense(batch) for _ in range(N_SAMPLES)]), setup
    if name == "dense_n2":
        return (lambda batch: setup.dense(batch, rows=N_SAMPLES)), setup
    if name == "inference":
        return setup.inference, setup
    return setup.stepper(name, n_samples=N_SAMPLES), setup


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def make_batch(vocab: int, rows: int = BATCH, length: int = LENGTH) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (rows, length), generator=generator)


def params_of(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# -- speed ----------------------------------------------------------------------------------


def bench_speed(name: str, variants: tuple[str, ...], device: torch.device, dtype: torch.dtype,
                repeats: int) -> dict[str, Any]:
    label, model = load_model(name, device, dtype)
    batch = make_batch(model.config.vocab_size)
    fns: dict[str, Callable[[torch.Tensor], Any]] = {}
    setups: dict[str, Setup] = {}
    available = set(estimators())
    missing = [v for v in variants if v in ("gumbel", "ppo") and v not in available]
    for variant in variants:
        if variant not in missing:
            fns[variant], setups[variant] = variant_fn(variant, model, device)
    times: dict[str, list[float]] = {v: [] for v in fns}
    oracle_times: dict[str, list[float]] = {v: [] for v in fns}
    for fn in fns.values():  # warm-up
        fn(batch)
    for _ in range(repeats):
        for variant, fn in fns.items():
            oracle = setups[variant].oracle
            oracle.seconds = 0.0
            times[variant].append(timed(lambda fn=fn: fn(batch), device))  # type: ignore[misc]
            oracle_times[variant].append(oracle.seconds)
    med = {f"{v}_s": round(statistics.median(t), 4) for v, t in times.items()}
    out: dict[str, Any] = {
        "model": label,
        "params": params_of(model),
        "layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
        "units": {u.kind: len(u) for u in next(iter(setups.values())).layout} if setups else {},
        **med,
    }
    if "reinforce" in times:
        out["reinforce_oracle_s"] = round(statistics.median(oracle_times["reinforce"]), 4)
        outside = [t - o for t, o in zip(times["reinforce"], oracle_times["reinforce"], strict=True)]
        out["reinforce_outside_oracle_s"] = round(statistics.median(outside), 4)
        r = med["reinforce_s"]
        if "two_dense_s" in med:
            out["ratio_reinforce_vs_two_dense"] = round(r / med["two_dense_s"], 3)
        if "dense_n2_s" in med:
            out["ratio_reinforce_vs_dense_n2"] = round(r / med["dense_n2_s"], 3)
        if "reinforce_masked_s" in med and "two_dense_s" in med:
            out["ratio_reinforce_masked_vs_two_dense"] = round(
                med["reinforce_masked_s"] / med["two_dense_s"], 3)
        if "gumbel_s" in med:
            out["ratio_reinforce_vs_gumbel"] = round(r / med["gumbel_s"], 3)
        if "ppo_s" in med:
            out["ratio_ppo_vs_reinforce"] = round(med["ppo_s"] / r, 3)
        out["reinforce_s_per_million_params"] = round(r / (out["params"] / 1e6), 5)
    if "layers_half_s" in med and "layers_on_s" in med:
        out["ratio_layers_half_vs_on"] = round(med["layers_half_s"] / med["layers_on_s"], 3)
    if missing:
        out["skipped_variants"] = {v: f"estimator '{v}' is not installed" for v in missing}
    out["spread_s"] = {v: [round(min(t), 4), round(max(t), 4)] for v, t in times.items()}
    del model, fns, setups
    gc.collect()
    return out


# -- memory (each measurement in a fresh child process) -------------------------------------


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def memory_child(name: str, variant: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Run in a fresh process: one measured call of ``variant`` on model ``name``."""
    label, model = load_model(name, device, dtype)
    fn, _ = variant_fn(variant, model, device)
    fn(make_batch(model.config.vocab_size, rows=1, length=8))  # lazy initialisation only
    batch = make_batch(model.config.vocab_size)
    gc.collect()
    _malloc_trim()
    with PeakMemory(device, interval_s=0.001) as peak:
        fn(batch)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"model": label, "variant": variant, "peak_bytes": int(peak.peak_bytes),
            "start_bytes": int(peak.start_bytes), "rise_bytes": int(peak.delta_bytes),
            "method": peak.method, "weights_bytes": int(weights),
            "logits_bytes": N_SAMPLES * BATCH * LENGTH * model.config.vocab_size
            * torch.empty(0, dtype=dtype).element_size()}


def run_child(name: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", f"{name}:{variant}",
               "--device", args.device, "--dtype", args.dtype]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {name}:{variant} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def bench_memory(name: str, args: argparse.Namespace) -> dict[str, Any]:
    available = set(estimators())
    variants = [v for v in MEMORY_VARIANTS if v == "inference" or v in available]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for _ in range(args.memory_repeats):
        for variant in variants:  # interleaved, one fresh process each
            runs[variant].append(run_child(name, variant, args))
    first = runs[variants[0]][0]
    # sampling can only miss a peak: the largest of the children is the best estimate
    peak = {v: max(r["peak_bytes"] for r in rs) for v, rs in runs.items()}
    rise = {v: max(r["rise_bytes"] for r in rs) for v, rs in runs.items()}
    out: dict[str, Any] = {
        "model": first["model"],
        "method": first["method"],
        "weights_bytes": first["weights_bytes"],
        "peak_bytes": peak,
        "rise_bytes": rise,
        "rise_bytes_all": {v: [r["rise_bytes"] for r in rs] for v, rs in runs.items()},
        # the logits of the 16 rows: the largest tensor of a forward (the loss adds one more)
        "logits_bytes": first["logits_bytes"],
    }
    if "reinforce" in peak:
        out["ratio_reinforce_vs_inference_peak"] = round(peak["reinforce"] / peak["inference"], 3)
        out["ratio_reinforce_vs_inference_rise"] = round(rise["reinforce"] / max(1, rise["inference"]), 3)
    if "gumbel" in peak and "reinforce" in peak:
        out["ratio_gumbel_vs_reinforce_peak"] = round(peak["gumbel"] / peak["reinforce"], 3)
        out["ratio_gumbel_vs_reinforce_rise"] = round(rise["gumbel"] / max(1, rise["reinforce"]), 3)
    return out


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="fresh child processes per memory variant (0: no memory part)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; 0 = torch's default)")
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help="comma-separated models of the cost-growth part ('' for none)")
    parser.add_argument("--memory-models", default="main,llama-12L-768h",
                        help="comma-separated models of the memory part")
    parser.add_argument("--variants", default=",".join(MAIN_VARIANTS),
                        help="comma-separated variants of the main model's speed part")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.memory_child:
        name, variant = args.memory_child.split(":")
        json.dump(memory_child(name, variant, device, dtype), sys.stdout)
        print()
        return 0
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "estimator_cost",
        "batch": [BATCH, LENGTH],
        "n_samples": N_SAMPLES,
        "start_prob": START_PROB,
        "budget": f"per-type, prune rate {RATE}",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "memory_repeats": args.memory_repeats,
        "targets": {"ratio_reinforce_masked_vs_two_dense": "<= 1.10",
                    "ratio_reinforce_vs_two_dense": "<= 0.75 (skip_pruned auto, 50 % pruned)",
                    "ratio_reinforce_vs_gumbel": "<= 0.4",
                    "ratio_reinforce_vs_inference_peak": "<= 1.10"},
    }
    if not PROXY_MODEL.is_dir():
        results["proxy_skipped"] = f"shared proxy model not found at {PROXY_MODEL}; main model is random"
    main_variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(main_variants) - set(MAIN_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(MAIN_VARIANTS)}")
    results["main"] = bench_speed("main", main_variants, device, dtype, args.repeats)
    sizes = [s for s in args.sizes.split(",") if s]
    results["sizes"] = [bench_speed(s, SIZE_VARIANTS, device, dtype, args.repeats) for s in sizes]
    if args.memory_repeats > 0:
        models = [m for m in args.memory_models.split(",") if m]
        results["memory"] = [bench_memory(m, args) for m in models]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
