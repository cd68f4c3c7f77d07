"""Benchmark: the optimisation time of a data-parallel run (torchrun) against one process.

The same ``pgprune run`` (the proxy model by default, ``reinforce``, N_s = 2, batch 8 x 128
tokens, channels + heads at 50 %, random start, no evaluation) is run

- ``one_1t``: in one process with one thread;
- ``one_Kt``: in one process with K threads (what the K cores give without torchrun);
- ``torchrun_K``: under ``torchrun --nproc-per-node K``, one thread per rank;

``--repeats`` times, the variants interleaved.  Each run's ``run.optimize_s`` (the loop's
time, without loading or evaluation) is read from its ``metrics.json``; the medians and the
ratios to ``one_1t`` are printed as one JSON document, with the check that every variant
learned the same masks (the definition of a K-process step: docs/scaling.md).

    OMP_NUM_THREADS=1 python tests/bench/data_parallel.py [--steps 60] [--repeats 3] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _proxy import add_proxy_setting, skipped_for_missing_assets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_setting(parser)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    if skipped_for_missing_assets(args):
        return
    k = args.ranks
    env = {name: value for name, value in os.environ.items()
           if name not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"

    scratch = tempfile.TemporaryDirectory()
    short_eval = Path(scratch.name) / "eval.txt"
    short_eval.write_text(Path(args.eval_file).read_text(encoding="utf-8")[:20000])

    def command(out: Path, threads: int) -> list[str]:
        return ["-m", "pgprune_core", "run", "--model", args.model,
                "--calib-file", args.calib_file, "--data.calib_slice", args.calib_slice,
                "--data.eval", "[]", "--evaluation.dense", "false", "--evaluator", "perplexity",
                # the pruned model's evaluation is not what is timed: a short text
                "--eval-file", str(short_eval),
                "--output.save_model", "false", "--prune-rate", "0.5", "--init", "random",
                "--steps", str(args.steps), "--batch-size", "8", "--seq-len", "128",
                "--training.threads", str(threads),
                # the same chunks of rows in every variant: 16 rows, 16 / K per chunk
                "--training.max_rows", str(16 // k), "--out", str(out)]

    variants = {
        "one_1t": lambda out: [sys.executable, *command(out, 1)],
        f"one_{k}t": lambda out: [sys.executable, *command(out, k)],
        f"torchrun_{k}": lambda out: [sys.executable, "-m", "torch.distributed.run",
                                      "--standalone", f"--nproc-per-node={k}", *command(out, 1)],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    masks: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, make in variants.items():
                out = Path(tmp) / f"{name}-{repeat}"
                done = subprocess.run(make(out), capture_output=True, text=True, env=env)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
                metrics = json.loads((out / "metrics.json").read_text())
                times[name].append(metrics["run"]["optimize_s"])
                keep = {kind: part["keep"] for kind, part in
                        json.loads((out / "masks.json").read_text())["kinds"].items()}
                masks.setdefault(name, json.dumps(keep, sort_keys=True))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "benchmark": "data_parallel",
        "model": args.model, "steps": args.steps, "ranks": k, "repeats": args.repeats,
        "step": "reinforce, N_s=2, batch 8 x 128, channel+head 50%, per-type budget",
        "optimize_s": times, "optimize_s_median": median,
        "per_step_s_median": {name: value / args.steps for name, value in median.items()},
        "ratio_to_one_1t": {name: value / median["one_1t"] for name, value in median.items()},
        "same_masks": len(set(masks.values())) == 1,
        "torch": torch.__version__, "cpus": os.cpu_count(), "python": platform.python_version(),
    }, indent=2))
    scratch.cleanup()


if __name__ == "__main__":
    main()
