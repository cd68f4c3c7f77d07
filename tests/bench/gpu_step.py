"""Benchmark: one ``reinforce`` step on a LLaMA-2-7B-shaped model on a GPU.

The paper (REFERENCE.md, "Published numbers") prunes LLaMA-2-7B channels + heads in 1.76 h
for one epoch of 120k segments (15,000 steps of 8 x 128 tokens, 0.42 s per step) on one
A100, with 18.2-19.5 GB of GPU memory.  This script holds the project's step against those
numbers:

- model: a LLaMA with LLaMA-2-7B's shape (hidden 4096, 32 layers, 32 heads, intermediate
  11008, vocab 32000; 6.74 B parameters) and RANDOM weights (std 0.02, transformers' own
  init), built in-process directly on the GPU in bfloat16 (``--dtype``) -- no download; the
  time and memory of a step do not depend on what the weights are;
- step: exactly the step of ``tests/bench/estimator_cost.py`` (it imports that script's
  helpers): batch 8 x 128 random token ids, channel + head units, every keep-probability 0.5
  under the ``per-type`` budget at prune rate 0.5, N_s = 2, the real ``reinforce`` plugin
  with the ``LossOracle`` and the ``bisection`` projector.

Parts, in this order; each is guarded, so one that fails (an out-of-memory gumbel step on a
small GPU, a ``torch.compile`` error) records its error under ``errors`` and the others
still report.  After every part the whole JSON so far is written to ``--partial PATH``
(when given), so a run stopped from outside still leaves its numbers:

- ``timing``: median over ``--steps`` rounds (after ``--warmup`` rounds) of one ``reinforce``
  step, of N_s dense 8-row evaluations (``two_dense_s``), of one dense 16-row evaluation
  (``dense_n2_s``) and of one ``gumbel`` step (``--no-gumbel`` leaves it out), interleaved,
  with ``torch.cuda.synchronize`` around each; the part of the reinforce step spent inside
  ``oracle.losses`` and outside it (sampling, baseline, gradient, projection); the CPU time
  spent installing and removing the mask hooks; extrapolated to 15,000 steps;
- ``memory``: ``torch.cuda.max_memory_allocated`` (tensors, weights included: the paper's
  kind of number) and ``max_memory_reserved`` (the caching allocator's pool, closer to what
  ``nvidia-smi`` shows), reset before one call each of plain inference (a dense forward of
  the 16 rows under ``torch.inference_mode`` + the loss), a ``reinforce`` step and a
  ``gumbel`` step;
- ``flops``: the FLOP floor of a step, 2 x parameters x tokens (two masked forwards of 8 x 128
  tokens: 2 x 6.74e9 x 2048 = 27.6 TFLOP; attention's own O(T^2) work is under 1 % at T =
  128), against the GPU's dense bf16 datasheet peak (989 TFLOP/s for an H100/H200 SXM, 756
  for an H100 PCIe, 312 for an A100; ``--peak-tflops`` for another GPU) and against the
  rate of one large bf16 matrix product measured here (8192^3, the practical ceiling):
  achieved TFLOP/s and ``step_s / (FLOP / peak)``;
- ``profile``: ``torch.profiler`` over ``--profile-steps`` reinforce steps: the top CUDA
  kernels by time, GPU time by kind (attention/SDPA, GEMM, elementwise and reductions,
  copies, other), the GPU's busy time (the union of kernel intervals) against the wall time
  of the steps (the rest is the GPU waiting on Python and kernel launches), and the top
  CPU-side operators by self time; ``--trace PATH`` also writes the Chrome trace;
- ``compile`` (only with ``--compile``): ``torch.compile`` of the model's forward
  (``--compile-backend``, default inductor): the first dense call and the first reinforce
  step (compilation included), then medians of both over ``--compile-steps`` rounds, and
  dynamo's counters (graphs, recompilations: the mask hooks change per step).

The paper's GPU is an A100; the one this runs on may be faster (an H100/H200) or slower, so
the hours are compared with the GPU's name beside them.  Without CUDA it prints one line of
JSON with ``"skipped"`` and exits 0.  ``--tiny`` runs the same code path on a tiny config
(on CUDA when present, else on the CPU) to test the script; its numbers mean nothing.

    python tests/bench/gpu_step.py [--steps 20] [--warmup 3] [--dtype bfloat16] [--no-gumbel]
                                   [--profile-steps 2] [--compile] [--partial PATH]
    python tests/bench/gpu_step.py --tiny --compile   # exercises the code path on a CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
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
#: dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the
#: first pattern that matches the device name wins
BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    (r"H100.*PCIe", 756.0), (r"H100|H200|H800|GH200", 989.0), (r"A100|A800", 312.0)]
#: kernel-name patterns of the profile's categories (first match wins)
#: the parts of a run, in the order they run
PARTS = ("timing", "memory", "flops", "profile", "compile")
KERNEL_KINDS: list[tuple[str, str]] = [
    ("attention", r"flash|fmha|sdpa|attention|mha"),
    ("gemm", r"gemm|xmma|cutlass|nvjet|cublas|wgmma|matmul|splitk"),
    ("copy", r"memcpy|memset|copy"),
    ("elementwise_reduce", r"elementwise|vectorized|reduce|softmax|norm|index|cat|scatter|gather"),
]


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


def gb(n_bytes: float) -> float:
    return round(n_bytes / 1e9, 3)


def bf16_peak_tflops(device_name: str) -> float | None:
    for pattern, peak in BF16_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peak
    return None


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, pattern in KERNEL_KINDS:
        if re.search(pattern, lowered):
            return kind
    return "other"


class TimedGranularity:
    """A granularity whose ``install`` (and the removal of its handles) is timed: the CPU
    cost of putting the masks in place, separate from the GPU work of applying them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def install(self, *args: Any, **kwargs: Any) -> list[Any]:
        start = time.perf_counter()
        handles = self.inner.install(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return [TimedHandle(h, self) for h in handles]


class TimedHandle:
    def __init__(self, inner: Any, owner: TimedGranularity) -> None:
        self.inner, self.owner = inner, owner

    def remove(self) -> None:
        start = time.perf_counter()
        self.inner.remove()
        self.owner.seconds += time.perf_counter() - start


class Partial:
    """Writes the results so far to ``path`` (atomically) after every part."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    def write(self, results: dict[str, Any]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def header(args: argparse.Namespace, argv: list[str], device: torch.device) -> dict[str, Any]:
    import transformers

    cuda = device.type == "cuda"
    out: dict[str, Any] = {
        "benchmark": "gpu_step",
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "dtype": args.dtype,
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        out["device_memory_bytes"] = int(props.total_memory)
        out["compute_capability"] = f"{props.major}.{props.minor}"
        out["multiprocessors"] = int(props.multi_processor_count)
        out["cudnn"] = torch.backends.cudnn.version()
    return out


class Bench:
    """The model, the step functions and the batch every part uses."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.cuda = device.type == "cuda"
        self.ec = _estimator_cost()
        self.shape = TINY if args.tiny else LLAMA2_7B
        started = time.perf_counter()
        self.model = build_model(self.shape, device, getattr(torch, args.dtype))
        self.ec.sync(device)
        self.build_s = time.perf_counter() - started
        self.params = sum(p.numel() for p in self.model.parameters())
        self.weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.setup = self.ec.Setup.build(self.model, ("channel", "head"), device)
        oracle = self.setup.oracle.inner
        self.timed_granularities = {k: TimedGranularity(g) for k, g in oracle.granularities.items()}
        oracle.granularities = dict(self.timed_granularities)
        self.batch = self.ec.make_batch(self.model.config.vocab_size)
        n = self.ec.N_SAMPLES
        self.fns: dict[str, Callable[[torch.Tensor], Any]] = {
            "reinforce": self.setup.stepper("reinforce", n_samples=n),
            "two_dense": lambda b: [self.setup.dense(b) for _ in range(n)],
            "dense_n2": lambda b: self.setup.dense(b, rows=n),
        }
        self.skipped: dict[str, str] = {}
        if args.no_gumbel:
            self.skipped["gumbel"] = "--no-gumbel"
        elif "gumbel" not in estimators():
            self.skipped["gumbel"] = "estimator 'gumbel' is not installed"
        else:
            self.fns["gumbel"] = self.setup.stepper("gumbel", n_samples=n)

    @property
    def tokens_per_step(self) -> int:
        return self.ec.N_SAMPLES * self.ec.BATCH * self.ec.LENGTH

    def hook_seconds(self) -> float:
        return sum(g.seconds for g in self.timed_granularities.values())

    def describe(self) -> dict[str, Any]:
        return {
            "model": {**self.shape, "params": self.params, "random_weights": True,
                      "attn_implementation": getattr(self.model.config, "_attn_implementation", None)},
            "batch": [self.ec.BATCH, self.ec.LENGTH],
            "n_samples": self.ec.N_SAMPLES,
            "units": {u.kind: len(u) for u in self.setup.layout},
            "build_s": round(self.build_s, 2),
        }


def part_timing(bench: Bench) -> dict[str, Any]:
    args, ec, batch, fns = bench.args, bench.ec, bench.batch, bench.fns
    for _ in range(args.warmup):
        for fn in fns.values():
            fn(batch)
    times: dict[str, list[float]] = {name: [] for name in fns}
    oracle_s: list[float] = []
    hooks_s: list[float] = []
    for _ in range(args.steps):
        for name, fn in fns.items():
            bench.setup.oracle.seconds = 0.0
            hooks_before = bench.hook_seconds()
            times[name].append(ec.timed(lambda fn=fn: fn(batch), bench.device))
            if name == "reinforce":
                oracle_s.append(bench.setup.oracle.seconds)
                hooks_s.append(bench.hook_seconds() - hooks_before)
    med = {name: statistics.median(values) for name, values in times.items()}
    step_s = med["reinforce"]
    outside = [t - o for t, o in zip(times["reinforce"], oracle_s, strict=True)]
    out: dict[str, Any] = {
        "steps": args.steps,
        **{f"{name}_s": round(value, 4) for name, value in med.items()},
        "reinforce_oracle_s": round(statistics.median(oracle_s), 4),
        "reinforce_outside_oracle_s": round(statistics.median(outside), 4),
        "reinforce_mask_hooks_cpu_s": round(statistics.median(hooks_s), 5),
        "ratio_reinforce_vs_two_dense": round(step_s / med["two_dense"], 3),
        "ratio_reinforce_vs_dense_n2": round(step_s / med["dense_n2"], 3),
        "spread_s": {name: [round(min(v), 4), round(max(v), 4)] for name, v in times.items()},
    }
    if "gumbel" in med:
        out["ratio_reinforce_vs_gumbel"] = round(step_s / med["gumbel"], 3)
    hours = step_s * PAPER_STEPS / 3600
    out["extrapolated"] = {
        "hours_per_15k_steps": round(hours, 3),
        "paper_hours_per_15k_steps": PAPER_HOURS,
        "paper_s_per_step": round(PAPER_HOURS * 3600 / PAPER_STEPS, 4),
        "ratio_to_paper": round(hours / PAPER_HOURS, 3),
        "paper_gpu": PAPER_GPU,
    }
    return out


def part_memory(bench: Bench) -> dict[str, Any]:
    memory: dict[str, Any] = {"method": "", "weights_bytes": bench.weights}
    measured: list[tuple[str, Callable[[torch.Tensor], Any]]] = [
        ("inference", bench.setup.inference), ("reinforce", bench.fns["reinforce"])]
    if "gumbel" in bench.fns:
        measured.append(("gumbel", bench.fns["gumbel"]))
    for name, fn in measured:
        if bench.cuda:
            torch.cuda.empty_cache()  # so that max_memory_reserved is this call's pool
        with PeakMemory(bench.device) as peak:
            fn(bench.batch)
        memory["method"] = peak.method
        memory[f"{name}_peak_bytes"] = int(peak.peak_bytes)
        memory[f"{name}_rise_bytes"] = int(peak.delta_bytes)
        if bench.cuda:
            memory[f"{name}_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(bench.device))
    memory["ratio_reinforce_vs_inference_peak"] = round(
        memory["reinforce_peak_bytes"] / memory["inference_peak_bytes"], 3)
    if "gumbel_peak_bytes" in memory:
        memory["ratio_gumbel_vs_reinforce_peak"] = round(
            memory["gumbel_peak_bytes"] / memory["reinforce_peak_bytes"], 3)
    memory["reinforce_peak_gb"] = gb(memory["reinforce_peak_bytes"])
    memory["paper_peak_gb"] = PAPER_PEAK_GB
    return memory


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """TFLOP/s of one n x n x n matrix product (mean of ``repeats`` after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    del a, b
    return 2 * n**3 / seconds / 1e12


def part_flops(bench: Bench, timing: dict[str, Any], device_name: str) -> dict[str, Any]:
    flop = 2 * bench.params * bench.tokens_per_step
    n = 1024 if bench.args.tiny else 8192
    measured = matmul_tflops(bench.device, getattr(torch, bench.args.dtype), n)
    peak = bench.args.peak_tflops or bf16_peak_tflops(device_name)
    out: dict[str, Any] = {
        "flop_per_step": flop,
        "formula": "2 x params x (N_s x batch x length) tokens",
        "matmul_tflops_measured": round(measured, 3),
        "matmul_size": n,
        "peak_tflops_datasheet": peak,
        "peak_source": "--peak-tflops" if bench.args.peak_tflops else "datasheet table by device name",
    }
    for name in ("reinforce", "dense_n2", "two_dense"):
        step_s = timing.get(f"{name}_s")
        if step_s is None:
            continue
        achieved = flop / step_s / 1e12
        out[f"{name}_tflops"] = round(achieved, 3)
        out[f"{name}_vs_matmul_floor"] = round(step_s / (flop / (measured * 1e12)), 3)
        if peak:
            out[f"{name}_vs_peak_floor"] = round(step_s / (flop / (peak * 1e12)), 3)
            out[f"{name}_fraction_of_peak"] = round(achieved / peak, 3)
    paper_s = PAPER_HOURS * 3600 / PAPER_STEPS
    out["paper_tflops_on_a100"] = round(flop / paper_s / 1e12, 3)
    out["paper_fraction_of_a100_peak"] = round(flop / paper_s / 1e12 / 312.0, 3)
    return out


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def part_profile(bench: Bench) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    fn = bench.fns["reinforce"]
    fn(bench.batch)  # warm, outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    steps = bench.args.profile_steps
    with profile(activities=activities) as prof:
        bench.ec.sync(bench.device)
        start = time.perf_counter()
        for _ in range(steps):
            fn(bench.batch)
        bench.ec.sync(bench.device)
        wall_s = time.perf_counter() - start
    kernels: dict[str, list[float]] = {}
    intervals: list[tuple[float, float]] = []
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        start_us, end_us = event.time_range.start, event.time_range.end
        intervals.append((start_us, end_us))
        entry = kernels.setdefault(event.name, [0.0, 0])
        entry[0] += end_us - start_us
        entry[1] += 1
    kernel_us = sum(v[0] for v in kernels.values())
    by_kind: dict[str, float] = {}
    for name, (us, _) in kernels.items():
        kind = kernel_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + us
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[: bench.args.profile_top]
    cpu_ops = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    cpu_ops.sort(key=lambda e: -e.self_cpu_time_total)
    busy_us = _union_us(intervals)
    out: dict[str, Any] = {
        "steps": steps,
        "wall_s_per_step": round(wall_s / steps, 4),
        "gpu_kernel_s_per_step": round(kernel_us / 1e6 / steps, 4),
        "gpu_busy_s_per_step": round(busy_us / 1e6 / steps, 4),
        "gpu_busy_fraction_of_wall": round(busy_us / 1e6 / wall_s, 3) if intervals else None,
        "gpu_s_per_step_by_kind": {k: round(v / 1e6 / steps, 4) for k, v in
                                   sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "gpu_share_by_kind": {k: round(v / kernel_us, 3) for k, v in by_kind.items()} if kernel_us else {},
        "top_kernels": [{"name": name[:160], "kind": kernel_kind(name),
                         "ms_per_step": round(us / 1e3 / steps, 3), "calls_per_step": count / steps,
                         "share": round(us / kernel_us, 3) if kernel_us else None}
                        for name, (us, count) in top],
        "top_cpu_ops": [{"name": e.key, "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 3),
                         "calls_per_step": e.count / steps}
                        for e in cpu_ops[: bench.args.profile_top]],
        "cpu_self_s_per_step": round(sum(e.self_cpu_time_total for e in cpu_ops) / 1e6 / steps, 4),
    }
    if bench.args.trace:
        prof.export_chrome_trace(bench.args.trace)
        out["trace"] = bench.args.trace
    return out


def _fixed_masks(bench: Bench) -> torch.Tensor:
    """N_s masks drawn once at keep-probability 0.5 (the same in every comparison)."""
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((bench.ec.N_SAMPLES, len(bench.setup.layout)), 0.5),
                           generator=generator)


def _compiled_run(bench: Bench, hook_guards: bool, masks: torch.Tensor,
                  eager: torch.Tensor, dense: torch.Tensor) -> dict[str, Any]:
    """Compile the model's forward afresh under one dynamo setting and measure it."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch._dynamo.config.skip_nnmodule_hook_guards = not hook_guards
    ec, batch, oracle = bench.ec, bench.batch, bench.setup.oracle.inner
    bench.model.compile(backend=bench.args.compile_backend, dynamic=False)
    try:
        out: dict[str, Any] = {"skip_nnmodule_hook_guards": not hook_guards}
        out["first_dense_n2_s"] = round(ec.timed(lambda: bench.fns["dense_n2"](batch), bench.device), 2)
        # the masked losses of the compiled model against the eager model's, same masks
        with torch.no_grad():
            compiled = oracle.losses(batch, masks).double()
        out["masked_losses_eager"] = [round(float(v), 6) for v in eager]
        out["masked_losses_compiled"] = [round(float(v), 6) for v in compiled]
        out["dense_loss"] = round(float(dense[0]), 6)
        to_eager = float((compiled - eager).abs().max())
        to_dense = float((compiled - dense).abs().max())
        out["max_diff_to_eager_masked"] = to_eager
        out["max_diff_to_dense"] = to_dense
        # the compiled masked losses must be the eager masked ones, not the dense one
        out["masks_respected"] = to_eager < to_dense
        steps = [ec.timed(lambda: bench.fns["reinforce"](batch), bench.device)
                 for _ in range(bench.args.compile_steps + 1)]
        out["reinforce_step_s_each"] = [round(t, 4) for t in steps]  # the first may compile
        out["reinforce_s"] = round(statistics.median(steps[1:]), 4)
        dense_times = [ec.timed(lambda: bench.fns["dense_n2"](batch), bench.device)
                       for _ in range(bench.args.compile_steps)]
        out["dense_n2_s"] = round(statistics.median(dense_times), 4)
        counters = torch._dynamo.utils.counters
        out["dynamo"] = {
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "calls_captured": int(counters["stats"].get("calls_captured", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "recompiles": int(sum(counters["recompiles"].values())),
        }
        return out
    finally:
        torch._dynamo.reset()
        bench.model._compiled_call_impl = None  # back to the eager forward


def part_compile(bench: Bench, progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """``torch.compile`` of the model's forward, under dynamo's default (which does not
    guard on module hooks: the mask hooks installed after compiling may be ignored, so
    the masked losses are checked against the eager model's) and with hook guards on
    (every step's new hooks then force a recompilation, up to dynamo's recompile limit)."""
    import torch._dynamo

    masks = _fixed_masks(bench)
    oracle = bench.setup.oracle.inner
    with torch.no_grad():
        eager = oracle.losses(bench.batch, masks).double()
        dense = oracle.losses(bench.batch, torch.ones(1, len(bench.setup.layout))).double()
    saved = torch._dynamo.config.skip_nnmodule_hook_guards
    out: dict[str, Any] = {"backend": bench.args.compile_backend,
                           "recompile_limit": getattr(torch._dynamo.config, "recompile_limit", None)}
    try:
        for label, hook_guards in (("default", False), ("hook_guards", True)):
            try:
                out[label] = _compiled_run(bench, hook_guards, masks, eager, dense)
            except Exception as exc:
                out[label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                print(f"compile ({label}) failed:\n{traceback.format_exc()}", file=sys.stderr)
            progress(out)  # the first setting's numbers survive a stop during the second
    finally:
        torch._dynamo.config.skip_nnmodule_hook_guards = saved
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--no-gumbel", action="store_true", help="leave the gumbel step out")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny config (on the CPU without CUDA): tests the code path")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = default)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, TFLOP/s (default: from the device name)")
    parser.add_argument("--profile-steps", type=int, default=2,
                        help="reinforce steps under torch.profiler (0: no profile part)")
    parser.add_argument("--profile-top", type=int, default=15, help="kernels / CPU ops listed")
    parser.add_argument("--trace", default=None, help="write the profile's Chrome trace here")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile part")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-steps", type=int, default=5, help="timed rounds after compiling")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)} "
                             f"(compile also needs --compile)")
    parser.add_argument("--partial", default=None,
                        help="write the JSON so far to this file after every part")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.compile and "compile" not in parts:
        parts.append("compile")
    if not args.compile and "compile" in parts:
        parts.remove("compile")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print(json.dumps({"benchmark": "gpu_step", "skipped":
                          f"CUDA is not available (torch {torch.__version__}); run it on a "
                          f"machine with an NVIDIA GPU, or pass --tiny to test the code path"}))
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    results = header(args, argv, device)
    partial = Partial(args.partial)
    errors: dict[str, str] = {}
    started = time.perf_counter()

    def guarded(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            value = fn()
        except Exception as exc:  # one part's failure must not lose the others' numbers
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"part {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
            value = None
        if cuda:
            torch.cuda.empty_cache()
        if errors:
            results["errors"] = errors
        results["wall_s"] = round(time.perf_counter() - started, 1)
        partial.write(results)
        return value

    bench: Bench | None = None

    def build() -> dict[str, Any]:
        nonlocal bench
        bench = Bench(args, device)
        return bench.describe()

    described = guarded("build", build)
    if bench is not None and described is not None:
        results.update(described)
        if bench.skipped:
            results["skipped_variants"] = bench.skipped
        b = bench
        timing = guarded("timing", lambda: part_timing(b)) if "timing" in parts else None
        if timing is not None:
            results.update(timing)
        if "memory" in parts:
            memory = guarded("memory", lambda: part_memory(b))
            if memory is not None:
                results["memory"] = memory
                if "extrapolated" in results:
                    results["extrapolated"]["peak_gb"] = memory["reinforce_peak_gb"]
                    results["extrapolated"]["paper_peak_gb"] = PAPER_PEAK_GB
        if "flops" in parts:
            flops = guarded("flops", lambda: part_flops(b, timing or {}, results["device"]))
            if flops is not None:
                results["flops"] = flops
        if "profile" in parts and args.profile_steps > 0:
            profiled = guarded("profile", lambda: part_profile(b))
            if profiled is not None:
                results["profile"] = profiled
        if "compile" in parts:
            def progress(so_far: dict[str, Any]) -> None:
                results["compile"] = so_far
                partial.write(results)

            compiled = guarded("compile", lambda: part_compile(b, progress))
            if compiled is not None:
                results["compile"] = compiled
    if args.tiny:
        results["note"] = "tiny config: tests the code path only; the numbers mean nothing"
    results["wall_s"] = round(time.perf_counter() - started, 1)
    partial.write(results)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
