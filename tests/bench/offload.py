"""Benchmark: what accelerate's CPU/disk offload costs a policy-gradient step.

The proxy LLaMA (``../shared``) is loaded twice through the llama adapter: whole, and with
``device_map="auto"``, ``max_memory={"cpu": FRACTION x its bytes}`` and an offload folder,
so that the layers that do not fit are offloaded to disk (their weights read from the
checkpoint at every forward).  For each it times ``LossOracle.losses`` for N=2 random
channel+head masks on a batch of 8 x 128 tokens (one step's forward), reports the bytes of
weights resident in memory (parameters not on ``meta``) and checks that both give the same
losses.  Timings are medians over ``--repeats`` rounds after a warm-up, the two models
interleaved within a round; the ratio ``offloaded / whole`` is taken within the run.

    python tests/bench/offload.py [--repeats 5] [--fraction 0.4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _proxy import PROXY_MODEL

from pgprune_core.interfaces import ModelSource
from pgprune_core.model.masking import LossOracle
from pgprune_core.model.structure import UnitLayout
from pgprune_core.plugin.registry import adapters, granularities

BATCH, LENGTH, KEEP = 8, 128, 0.7


def oracle_for(model_dir: Path, **options: Any) -> tuple[Any, LossOracle]:
    adapter = adapters()["llama"]()
    model = adapter.load(ModelSource(name_or_path=str(model_dir), **options)).model
    structure = adapter.describe_model(model)
    kinds = granularities()
    chosen = {kind: kinds[kind]() for kind in ("channel", "head")}
    layout = UnitLayout([g.units(structure) for g in chosen.values()])
    return model, LossOracle(model, structure, layout, chosen)


def resident_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "meta")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(PROXY_MODEL))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.4,
                        help="CPU budget as a fraction of the weights' bytes")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(json.dumps({"skipped": f"missing benchmark asset: {model_dir}"}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = (model_dir / "model.safetensors").stat().st_size
    with tempfile.TemporaryDirectory() as folder:
        whole, whole_oracle = oracle_for(model_dir)
        offloaded, off_oracle = oracle_for(
            model_dir, device_map="auto", max_memory={"cpu": int(args.fraction * weights)},
            offload_folder=folder)
        generator = torch.Generator().manual_seed(0)
        vocab = whole.config.vocab_size
        batch = torch.randint(0, vocab, (BATCH, LENGTH), generator=generator)
        masks = (torch.rand(2, len(whole_oracle.layout), generator=generator) < KEEP).float()
        oracles = {"whole": whole_oracle, "offloaded": off_oracle}
        losses = {name: oracle.losses(batch, masks) for name, oracle in oracles.items()}  # warm-up
        times: dict[str, list[float]] = {name: [] for name in oracles}
        for _ in range(args.repeats):
            for name, oracle in oracles.items():
                start = time.perf_counter()
                oracle.losses(batch, masks)
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}
        result = {
            "benchmark": "offload",
            "model": model_dir.name,
            "batch": [BATCH, LENGTH],
            "n_masks": 2,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_budget_bytes": int(args.fraction * weights),
            "device_map": {key: str(value) for key, value in offloaded.hf_device_map.items()},
            "resident_weight_bytes": {"whole": resident_bytes(whole),
                                      "offloaded": resident_bytes(offloaded)},
            "step_forward_s": medians,
            "offloaded_over_whole": medians["offloaded"] / medians["whole"],
            "max_abs_loss_difference": float((losses["offloaded"] - losses["whole"]).abs().max()),
        }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
