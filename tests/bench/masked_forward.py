"""Benchmark: the cost of evaluating sampled masks with one batched forward.

For each model (the shared proxy LLaMA when ``../shared`` exists, and a larger in-process
LLaMA config with random weights) and a batch of 8 x 128 tokens, it times
``LossOracle.losses`` (forward + per-mask cross-entropy, under ``torch.inference_mode``):

- ``n2_batched_s``: N=2 random channel+head masks in ONE batched forward (16 rows), against
  ``two_dense_s``: two dense evaluations of the same batch (8 rows each).  Target <= 1.10.
- ``half_layers_s``: N=2 masks that drop the same half of the layers (masked in every row,
  so those layers are skipped), against ``dense_n2_s``: the same 16 rows unmasked.  Target
  <= 0.6.
- ``rowwise_layers_s``: N=2 masks that each drop a *different* half of the layers (rows
  whose layer is masked are not computed), against ``dense_n2_s``.

With ``--part skipping`` (or ``all``) it times the forward that leaves pruned units
uncomputed (``LossOracle(skip_pruned=...)``, ``pgprune_core.model.sparse_forward``) against
the masked one, on N=2 random masks over channel + head units that prune a fraction
``rate`` of each kind (every unit kept with probability ``1 - rate``), for rates 0.5 and 0.1:

- ``masked_<pct>_s``: ``skip_pruned="off"`` (the masked forward), ``skip_<pct>_s``:
  ``skip_pruned="on"``, ``auto_<pct>_s``: ``skip_pruned="auto"`` (the default), all
  against ``two_dense_s``.  Target at 50 %: ``skip / two_dense <= 0.75``; at 10 %: not
  above ``masked / two_dense``.  ``max_abs_loss_diff_<pct>``: the largest difference of
  the per-mask losses between the skipping and the masked forward.

The lm_head (and the cross-entropy over the vocabulary) is not skipped with the layers, so
the half-layer ratio cannot go below ``1 - share / 2``, where ``share`` is the decoder layers'
part of the per-token multiply-adds (``half_layers_bound_from_lm_head_share`` in the output).

Timings are medians over ``--repeats`` rounds (after a warm-up round); within a round the
variants run one after the other, so slow drifts of a shared machine hit all of them alike.
Peak memory (``pgprune_core.evaluation.memory.PeakMemory``): the process RSS (CPU) or
``max_memory_allocated`` (CUDA) during one more run of each variant, absolute and as the rise
above the start of that run.
Prints one JSON document; ``docs/benchmarks.md`` records the numbers.

    python tests/bench/masked_forward.py [--repeats 7] [--device cpu] [--threads N]
                                         [--part layers|skipping|all]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _proxy import PROXY_MODEL

from pgprune_core.evaluation.memory import PeakMemory
from pgprune_core.model.masking import LossOracle
from pgprune_core.model.structure import UnitLayout
from pgprune_core.plugin.registry import adapters, granularities

BATCH, LENGTH, KEEP = 8, 128, 0.7


def larger_model(device: torch.device) -> Any:
    """A LLaMA of 12 layers, hidden 512, 8 heads (MHA), intermediate 1376, vocab 4096, with
    random weights: timing does not depend on what the weights are."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1376,
                         num_hidden_layers=12, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device).eval()


def _time(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


#: prune rates of the skipping part (fraction of each kind's units masked)
SKIP_RATES = (0.5, 0.1)


def _run_rounds(variants: dict[str, Callable[[], Any]], device: torch.device,
                repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Medians over ``repeats`` rounds after one warm-up round, the variants interleaved
    within a round (a shared machine's slow drifts hit all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_time(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}, times


def bench_skipping(label: str, model: Any, device: torch.device, repeats: int) -> dict[str, Any]:
    """The skipping forward against the masked one at each of :data:`SKIP_RATES`."""
    structure = adapters()["llama"]().describe_model(model)
    kinds = granularities()
    chosen = {kind: kinds[kind]() for kind in ("channel", "head")}
    layout = UnitLayout([g.units(structure) for g in chosen.values()])
    oracles = {mode: LossOracle(model, structure, layout, chosen, skip_pruned=mode)
               for mode in ("off", "on", "auto")}
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (BATCH, LENGTH), generator=generator)
    ones1 = torch.ones(1, len(layout))
    variants: dict[str, Callable[[], Any]] = {
        "two_dense_s": lambda: (oracles["off"].losses(batch, ones1),
                                oracles["off"].losses(batch, ones1)),
    }
    masks = {}
    for rate in SKIP_RATES:
        pct = round(rate * 100)
        masks[pct] = (torch.rand(2, len(layout), generator=generator) >= rate).float()
        for name, mode in (("masked", "off"), ("skip", "on"), ("auto", "auto")):
            variants[f"{name}_{pct}_s"] = (
                lambda oracle=oracles[mode], m=masks[pct]: oracle.losses(batch, m))
    medians, times = _run_rounds(variants, device, repeats)
    out: dict[str, Any] = {
        "model": label,
        "layers": structure.n_layers,
        "hidden": structure.hidden_size,
        "units": {u.kind: len(u) for u in layout},
        **{name: round(value, 4) for name, value in medians.items()},
    }
    dense = medians["two_dense_s"]
    for pct, mask in masks.items():
        out[f"kept_fraction_{pct}"] = round(float(mask.mean()), 3)
        for name in ("masked", "skip", "auto"):
            out[f"ratio_{name}_{pct}_vs_two_dense"] = round(medians[f"{name}_{pct}_s"] / dense, 3)
        diff = oracles["on"].losses(batch, mask) - oracles["off"].losses(batch, mask)
        out[f"max_abs_loss_diff_{pct}"] = float(diff.abs().max())
    layer_params = sum(site.n_params() for site in structure.layers)
    head_params = model.get_output_embeddings().weight.numel()
    # the lm_head's share of the per-token multiply-adds is never skipped
    out["lm_head_share"] = round(head_params / (layer_params + head_params), 3)
    out["spread_s"] = {name: [round(min(v), 4), round(max(v), 4)] for name, v in times.items()}
    return out


def bench_model(label: str, model: Any, device: torch.device, repeats: int) -> dict[str, Any]:
    structure = adapters()["llama"]().describe_model(model)
    kinds = granularities()
    chosen = {kind: kinds[kind]() for kind in ("channel", "head", "layer")}
    layout = UnitLayout([g.units(structure) for g in chosen.values()])
    oracle = LossOracle(model, structure, layout, chosen, skip_pruned="off")
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (BATCH, LENGTH), generator=generator)
    n_layers = structure.n_layers
    layer_slice = layout.offsets["layer"]

    def masks(layers_off: list[list[int]]) -> torch.Tensor:
        """Two masks: random channels/heads kept with probability KEEP, given layers off."""
        rows = []
        for off in layers_off:
            mask = (torch.rand(len(layout), generator=generator) < KEEP).float()
            mask[layer_slice] = 1.0
            mask[layer_slice.start + torch.tensor(off, dtype=torch.int64)] = 0.0
            rows.append(mask)
        return torch.stack(rows)

    half = list(range(1, n_layers, 2))
    other_half = list(range(0, n_layers, 2))
    ones2 = torch.ones(2, len(layout))
    ones1 = torch.ones(1, len(layout))
    variants: dict[str, Callable[[], Any]] = {
        "two_dense_s": lambda: (oracle.losses(batch, ones1), oracle.losses(batch, ones1)),
        "n2_batched_s": lambda: oracle.losses(batch, masks([[], []])),
        "dense_n2_s": lambda: oracle.losses(batch, ones2),
        "half_layers_s": lambda: oracle.losses(batch, masks([half, half])),
        "rowwise_layers_s": lambda: oracle.losses(batch, masks([half, other_half])),
    }
    medians, times = _run_rounds(variants, device, repeats)
    peaks: dict[str, int] = {}
    rises: dict[str, int] = {}
    for name, fn in variants.items():
        with PeakMemory(device) as peak:
            fn()
        peaks[name] = int(peak.peak_bytes)
        rises[name] = int(peak.delta_bytes)
    # the share of per-token multiply-adds in the decoder layers (the rest is the lm_head):
    # skipping half the layers cannot go below 1 - share / 2
    layer_params = sum(site.n_params() for site in structure.layers)
    head_params = model.get_output_embeddings().weight.numel()
    layer_share = layer_params / (layer_params + head_params)
    return {
        "model": label,
        "layers": n_layers,
        "hidden": structure.hidden_size,
        "params": sum(p.numel() for p in model.parameters()),
        "units": {u.kind: len(u) for u in layout},
        **{name: round(value, 4) for name, value in medians.items()},
        "ratio_n2_vs_two_dense": round(medians["n2_batched_s"] / medians["two_dense_s"], 3),
        "ratio_half_layers_vs_dense": round(medians["half_layers_s"] / medians["dense_n2_s"], 3),
        "ratio_rowwise_layers_vs_dense": round(medians["rowwise_layers_s"] / medians["dense_n2_s"], 3),
        "half_layers_bound_from_lm_head_share": round(1 - layer_share / 2, 3),
        "peak_memory_bytes": peaks,
        "peak_rise_bytes": rises,
        "peak_memory_method": peak.method,
        "spread_s": {name: [round(min(v), 4), round(max(v), 4)] for name, v in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--part", choices=("layers", "skipping", "all"), default="layers",
                        help="the batched/layer-skipping variants, the unit-skipping ones, or both")
    args = parser.parse_args(argv)
    parts = {"layers": (bench_model,), "skipping": (bench_skipping,),
             "all": (bench_model, bench_skipping)}[args.part]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "benchmark": "masked_forward",
        "part": args.part,
        "batch": [BATCH, LENGTH],
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "repeats": args.repeats,
        "models": [],
    }
    if PROXY_MODEL.is_dir():
        from transformers import LlamaForCausalLM

        proxy = LlamaForCausalLM.from_pretrained(PROXY_MODEL, dtype=torch.float32).to(device).eval()
        for bench in parts:
            results["models"].append(bench("proxy-llama-7m", proxy, device, args.repeats))
        del proxy
    else:
        results["skipped"] = f"shared proxy model not found at {PROXY_MODEL}"
    larger = larger_model(device)
    for bench in parts:
        results["models"].append(bench("llama-12L-512h (random weights)", larger, device,
                                        args.repeats))
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
