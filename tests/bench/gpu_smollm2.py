"""Benchmark: a short ``pgprune run`` on SmolLM2-135M-Instruct on a GPU (the paper's protocol).

What one real run costs on a GPU, end to end through the CLI: the model from
``shared/models/smollm2-135m`` (a GGUF file in two parts, converted by its own ``to_hf.py``,
which needs the ``gguf`` package) in bfloat16 on ``cuda``; 50 % of channels + heads under the
``per-type`` budget; Wanda-sp on the authors' 128 x 1,024 calibration tokens; ``reinforce``
with its defaults for ``--steps`` steps (default 50) of the paper's batch, 8 x 128 tokens,
drawn from the C4 validation documents 0-1999; perplexity of the dense and the pruned model
on the whole WikiText-2 raw test at 128 tokens.  Recorded: the command, the device and the
library versions, the conversion's seconds, the step's seconds (median of the per-step
times of ``metrics.jsonl``, the first step left out, and the mean over all steps), the run's
peak memory (``run.peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` over the
initializer and the loop) and the logged loss of the sampled masks at the start and at the
end (means of the first and of the last ``--loss-window`` steps) with their ratio.  Fifty
steps move the probabilities little: the loss ratio says the loop runs and learns in the
right direction, not what a full run reaches.

The assets (``--parts-dir`` with the two ``.part`` files, ``--to-hf``, ``--calib-file``,
``--eval-file``) default to ``../shared``; ``tests/bench/gpu_suite.sh`` passes copies that
travel with the repository.  A missing asset prints ``{"skipped": ...}`` and exits 0.
``--tiny`` runs the same path on the CPU with the shared proxy model (3 steps of 2 x 128,
Wanda-sp on 4 windows, 20 evaluation windows): it tests the script; its numbers mean nothing.

    python tests/bench/gpu_smollm2.py [--steps 50] [--work runs/bench-gpu-smollm2]
    python tests/bench/gpu_smollm2.py --tiny
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _proxy import CALIB_FILE, EVAL_FILE, PROXY_MODEL, SMOLLM2_ASSET

#: the asset's file, stored in two parts (``.part0``, ``.part1``)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def convert(to_hf: Path, parts_dir: Path, out: Path) -> float:
    """Write the HF directory ``out`` from the GGUF parts (once); the seconds it took."""
    if (out / "config.json").is_file():
        return 0.0
    started = time.perf_counter()
    subprocess.run([sys.executable, str(to_hf), str(out), "--dtype", "bfloat16",
                    "--parts-dir", str(parts_dir)], check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def run_command(args: argparse.Namespace, model: Path, out: Path) -> list[str]:
    """The ``pgprune run`` options of this benchmark."""
    command = ["pgprune", "run", "--model", str(model),
               "--calib-file", args.calib_file, "--data.eval", "[]", "--eval-file", args.eval_file,
               "--evaluator", "perplexity", "--output.save_model", "false",
               "--granularity", "channel,head", "--prune-rate", "0.5", "--budget", "per-type",
               "--init", "wanda-sp", "--estimator", "reinforce", "--seq-len", "128",
               "--training.log_every", "1", "--output.overwrite", "true", "--out", str(out)]
    if args.tiny:
        command += ["--device", "cpu", "--dtype", "float32", "--steps", "3", "--batch-size", "2",
                    "--data.calib_slice", "1800:2000", "--init.n_sequences", "4",
                    "--evaluation.evaluators", "[{name: perplexity, max_windows: 20}]"]
    else:
        command += ["--device", "cuda", "--dtype", "bfloat16", "--steps", str(args.steps),
                    "--batch-size", "8", "--data.calib_slice", "0:2000"]
    return command + shlex.split(args.extra)


def summarise(run_dir: Path, window: int) -> dict[str, Any]:
    """s/step, peak memory, losses and perplexities of a finished run directory."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    records = [json.loads(line) for line in
               (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    run = metrics["run"]
    cumulative = [r["optimize_s"] for r in records]
    per_step = [b - a for a, b in itertools.pairwise(cumulative)]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    first, last = losses[:window], losses[-window:]
    out: dict[str, Any] = {
        "steps": run["steps"],
        "s_per_step_median": round(statistics.median(per_step), 4) if per_step else None,
        "s_per_step_mean": round(run["optimize_s"] / max(1, run["steps"]), 4),
        "optimize_s": run["optimize_s"],
        "run_wall_s": run["wall_s"],
        "peak_memory_bytes": run["peak_memory_bytes"],
        "peak_memory_gb": round(run["peak_memory_bytes"] / 1e9, 3),
        "peak_memory_start_bytes": run["peak_memory_start_bytes"],
        "peak_memory_method": run["peak_memory_method"],
        "loss_window": window,
        "loss_initial": round(statistics.fmean(first), 4) if first else None,
        "loss_final": round(statistics.fmean(last), 4) if last else None,
        "params": {"dense": metrics["dense"].get("params"), "pruned": metrics["pruned"].get("params")},
        "ppl": {"dense": metrics["dense"].get("ppl"), "pruned": metrics["pruned"].get("ppl")},
        "ppl_tokens": metrics["dense"].get("ppl_tokens"),
    }
    if first and last:
        out["loss_final_vs_initial"] = round(out["loss_final"] / out["loss_initial"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--loss-window", type=int, default=5,
                        help="steps averaged for the initial and the final loss")
    parser.add_argument("--work", default="runs/bench-gpu-smollm2")
    parser.add_argument("--model", default=None, help="an HF directory: no conversion")
    parser.add_argument("--parts-dir", default=str(SMOLLM2_ASSET))
    parser.add_argument("--to-hf", default=str(SMOLLM2_ASSET / "to_hf.py"))
    parser.add_argument("--calib-file", default=str(CALIB_FILE))
    parser.add_argument("--eval-file", default=str(EVAL_FILE))
    parser.add_argument("--extra", default="", help="more pgprune run options, one string")
    parser.add_argument("--tiny", action="store_true",
                        help="the proxy model on the CPU, 3 steps: tests the code path")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers

    results: dict[str, Any] = {
        "benchmark": "gpu_smollm2",
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
        "tiny": args.tiny,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    if not args.tiny and not torch.cuda.is_available():
        print(json.dumps({**results, "skipped": "CUDA is not available; run it on a machine "
                          "with an NVIDIA GPU, or pass --tiny to test the code path"}))
        return 0
    results["device"] = torch.cuda.get_device_name(0) if not args.tiny else "cpu"
    work = Path(args.work)
    needed = [Path(args.calib_file), Path(args.eval_file)]
    if args.tiny:
        model = Path(args.model) if args.model else PROXY_MODEL
        needed.append(model)
    elif args.model:
        model = Path(args.model)
        needed.append(model)
    else:
        model = work / "smollm2-135m-hf"
        if not (model / "config.json").is_file():
            needed += [Path(args.to_hf), *(Path(args.parts_dir) / f"{GGUF}.part{i}" for i in (0, 1))]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(json.dumps({**results, "skipped": f"missing benchmark asset: {', '.join(missing)}"}))
        return 0
    if not args.tiny and not args.model:
        results["conversion_s"] = round(convert(Path(args.to_hf), Path(args.parts_dir), model), 1)
    run_dir = work / ("run-tiny" if args.tiny else "run")
    command = run_command(args, model, run_dir)
    results["run_command"] = shlex.join(command)
    print("$ " + results["run_command"], file=sys.stderr, flush=True)
    started = time.perf_counter()
    # the run's progress and summary go to stderr: stdout is this script's JSON alone
    subprocess.run([sys.executable, "-m", "pgprune_core", *command[1:]], check=True,
                   stdout=sys.stderr)
    results["process_s"] = round(time.perf_counter() - started, 1)
    results.update(summarise(run_dir, args.loss_window))
    if args.tiny:
        results["note"] = "tiny: the proxy model on the CPU; tests the code path only"
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
