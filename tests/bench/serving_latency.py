"""Benchmark: latency of pruned models as exported for serving, in transformers on CPU.

For each serving shape it prunes the model (channels + heads, ``per-type`` budget, the
rate of ``--rate``; which units go is decided by the ``magnitude`` metric, which needs no
data: the timing depends on the shapes, not on the choice of units), exports it in the
format that shape is for, reloads the export as a user would, and times it against the
dense model:

==============================  =========  =============================================
shape                           format     loaded with
==============================  =========  =============================================
dense                           (hf)       ``AutoModelForCausalLM`` (the original)
``free``                        pgprune    ``load_pruned`` (per-layer heads and widths)
``uniform-heads``               decilm     ``AutoModelForCausalLM``, ``trust_remote_code``
``uniform-heads`` x256          decilm     the same, every width a multiple of 256
``uniform``                     hf         ``AutoModelForCausalLM``, no remote code
==============================  =========  =============================================

Measured per model: ``forward_s``, one forward of a fixed batch (``--batch`` x
``--length`` random tokens, no cache); ``generate_s``, greedy ``generate()`` of
``--new-tokens`` tokens from a ``--prompt``-token prompt, batch 1, with the KV cache;
medians over ``--repeats`` rounds after a warm-up round, the models interleaved within a
round (a shared machine's drifts hit all alike).  Derived: tokens/s of each, and *time per
parameter*: ``latency / dense latency`` divided by ``params / dense params`` (below 1: the
model is faster than its parameter count predicts).  ``peak_rss_bytes``: the peak RSS (sampled every
5 ms) of a fresh process, torch and pgprune imported, while it loads the export and runs
one forward and one generation; ``peak_rss_rise_bytes``: how far it rose above the RSS
before loading.

    python tests/bench/serving_latency.py --model-set proxy > latency-proxy.json
    python tests/bench/serving_latency.py --model-set smollm2 > latency-smollm2.json

Run it on an otherwise idle machine. Prints one JSON document; ``docs/benchmarks.md`` records the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _proxy import PROXY_MODEL, smollm2_dir
from masked_forward import _run_rounds

#: shape -> (pruning.shape, pruning.channel_multiple, export format)
SHAPES: dict[str, tuple[str, int, str]] = {
    "free": ("free", 1, "pgprune"),
    "uniform-heads": ("uniform-heads", 1, "decilm"),
    "uniform-heads-x256": ("uniform-heads", 256, "decilm"),
    "uniform": ("uniform", 1, "hf"),
}


def load(path: Path, fmt: str) -> Any:
    """The model of ``path`` as a user loads an export of format ``fmt`` (``hf`` also for
    the dense original), in eval mode."""
    from transformers import AutoModelForCausalLM

    from pgprune_core.model.surgery import load_pruned

    if fmt == "pgprune":
        return load_pruned(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=fmt == "decilm",
                                                 dtype=torch.float32)
    return model.eval()


def export_shapes(model_dir: Path, rate: float, out: Path) -> dict[str, dict[str, Any]]:
    """Prune the model at ``rate`` for every shape of :data:`SHAPES` and export it into
    ``out/<shape>``; returns per shape its format, directory and per-layer shapes."""
    from transformers import AutoTokenizer

    from pgprune_core.interfaces import InitContext
    from pgprune_core.model.export import export_pruned
    from pgprune_core.model.structure import UnitLayout
    from pgprune_core.model.surgery import layer_shapes, prune_model
    from pgprune_core.optim.budget import Budget
    from pgprune_core.plugin.registry import adapters, granularities, initializers

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    adapter = adapters()["llama"]()
    exported = {}
    for name, (shape, multiple, fmt) in SHAPES.items():
        model = load(model_dir, "hf")
        structure = adapter.describe_model(model)
        chosen = {kind: granularities()[kind]() for kind in ("channel", "head")}
        layout = UnitLayout([g.units(structure) for g in chosen.values()])
        scores = initializers()["magnitude"]().compute(
            InitContext(model=model, structure=structure, layout=layout, granularities=chosen,
                        device=torch.device("cpu"), seed=0))
        budget = Budget("per-type", layout, rate, shape=shape, channel_multiple=multiple)  # type: ignore[arg-type]
        prune_model(structure, layout, chosen, budget.final_mask(scores))
        result = export_pruned(model, tokenizer, out / name, fmt, adapter_name="llama",
                               base_model=str(model_dir))
        shapes = layer_shapes(adapter.describe_model(model))
        exported[name] = {"format": fmt, "path": str(result.path), "params": result.params,
                          "kv_heads": [s["n_kv_heads"] for s in shapes],
                          "mlp_widths": [s["intermediate_size"] for s in shapes],
                          "notes": result.notes}
    return exported


def peak_rss(path: str, fmt: str, args: argparse.Namespace) -> dict[str, int]:
    """Peak RSS of a fresh process loading ``path`` and running it once."""
    command = [sys.executable, __file__, "--peak-of", path, "--format", fmt, *passthrough(args)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def passthrough(args: argparse.Namespace) -> list[str]:
    return ["--batch", str(args.batch), "--length", str(args.length), "--prompt", str(args.prompt),
            "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]


def workload(model: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """(forward of the fixed batch, greedy generation with the KV cache) as callables."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (args.batch, args.length), generator=generator)
    prompt = torch.randint(0, vocab, (1, args.prompt), generator=generator)

    @torch.inference_mode()
    def forward() -> Any:
        return model(batch, use_cache=False).logits

    @torch.inference_mode()
    def generate() -> Any:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                             do_sample=False, use_cache=True, pad_token_id=0)
        assert out.shape[1] == args.prompt + args.new_tokens
        return out

    return forward, generate


def measure_peak(args: argparse.Namespace) -> None:
    from pgprune_core.evaluation.memory import PeakMemory

    with PeakMemory("cpu") as peak:
        forward, generate = workload(load(Path(args.peak_of), args.format), args)
        forward()
        generate()
    print(json.dumps({"peak_rss_bytes": int(peak.peak_bytes),
                      "peak_rss_rise_bytes": int(peak.delta_bytes)}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-set", choices=("proxy", "smollm2"), default="proxy")
    parser.add_argument("--rate", type=float, default=0.5, help="prune rate of channels and heads")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--peak-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--format", default="hf", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.peak_of:
        measure_peak(args)
        return
    model_dir = PROXY_MODEL if args.model_set == "proxy" else smollm2_dir()
    if model_dir is None or not Path(model_dir).exists():
        print(json.dumps({"skipped": f"missing benchmark asset: the {args.model_set} model"}))
        return
    with tempfile.TemporaryDirectory(prefix="pgprune-latency-") as tmp:
        models = {"dense": {"format": "hf", "path": str(model_dir)},
                  **export_shapes(Path(model_dir), args.rate, Path(tmp))}
        variants = {}
        for name, entry in models.items():
            model = load(Path(entry["path"]), entry["format"])
            entry["params"] = sum(p.numel() for p in model.parameters())
            entry["class"] = type(model).__name__
            forward, generate = workload(model, args)
            variants[f"{name}/forward"], variants[f"{name}/generate"] = forward, generate
        medians, times = _run_rounds(variants, torch.device("cpu"), args.repeats)
        dense = models["dense"]
        for name, entry in models.items():
            for part, tokens in (("forward", args.batch * args.length), ("generate", args.new_tokens)):
                seconds = medians[f"{name}/{part}"]
                entry[f"{part}_s"] = round(seconds, 4)
                entry[f"{part}_spread_s"] = [round(min(times[f"{name}/{part}"]), 4),
                                             round(max(times[f"{name}/{part}"]), 4)]
                entry[f"{part}_tokens_per_s"] = round(tokens / seconds, 1)
                relative = seconds / medians[f"dense/{part}"]
                entry[f"{part}_vs_dense"] = round(relative, 3)
                entry[f"{part}_time_per_param"] = round(relative / (entry["params"] / dense["params"]), 3)
            entry["params_vs_dense"] = round(entry["params"] / dense["params"], 3)
            entry.update(peak_rss(entry["path"], entry["format"], args))
            del entry["path"]
    print(json.dumps({
        "model_set": args.model_set, "model": str(model_dir), "rate": args.rate,
        "batch": [args.batch, args.length], "prompt": args.prompt, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
        "machine": platform.machine(), "models": models,
    }, indent=1))


if __name__ == "__main__":
    main()
