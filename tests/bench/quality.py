"""Benchmark: pruning quality on the proxy model, as ``pgprune compare`` grids.

Every grid is one ``pgprune compare`` command (printed before it runs, so each table in
``docs/benchmarks.md`` names the command that made it) in ``WORK/<grid>``; its cells are
ordinary run directories, dense metrics and initial scores are computed once per grid, and
re-running the script continues unfinished grids (finished cells are not run again).

Setting of ``shared/REFERENCE.md``: proxy-llama-7m, calibration C4 validation docs
1800-1999, evaluation WikiText-2 raw test in 128-token windows, batch 8 x 128, seed 0.

Grids (``--grids``, default all; ``--rates`` sets the rates of the first five):

- ``wanda-sp``: reinforce from wanda-sp and wanda-sp alone (``--estimator none``), 30/40/50 %,
  channels+heads, budgets ``per-type`` and ``params``.
- ``random-masks``: random masks (``--estimator none --init random``), the same cells.
- ``starts``: reinforce from random, magnitude and taylor, and each alone, per-type.
- ``progressive``: reinforce with ``--schedule random-progressive`` (random start at 5 %,
  +5 % per stage, the steps split evenly over the stages), per-type.
- ``layers``: reinforce from random, layerwise-ppl and taylor, and each alone, layers only.
- ``budgets``: reinforce from wanda-sp at 50 % with the ``global`` and ``local`` budgets
  (``per-type`` and ``params`` are in ``wanda-sp``).
- ``baseline``: reinforce from wanda-sp at 50 % without the moving-average baseline
  (``--estimator.baseline none``; with it: ``wanda-sp``).
- ``estimators``: reinforce, gumbel and ppo from wanda-sp at 50 %, per-type, ``--seeds``,
  the same number of forward passes (``--equal-forwards``).

    python tests/bench/quality.py --work runs/bench-quality > quality.json
    python tests/bench/quality.py --grids starts --rates 0.5
    python tests/bench/quality.py --grids estimators --seeds 0,1,2

Prints one JSON document: per grid its command and the rows of its ``compare.csv``.
Cost on one CPU core: a reinforce cell of 1,000 steps ≈ 3-6 min, a gumbel cell ≈ 11 min, a
metric-only cell ≈ 1 min; all grids with one seed ≈ 4 hours (two grids side by side on two
cores: about half). Results: ``docs/benchmarks.md``, "Quality on the proxy model" and
"Estimators compared".
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _proxy import add_proxy_setting, skipped_for_missing_assets

RATES = "0.3,0.4,0.5"


def grids(steps: int, rates: str = RATES, seeds: str = "0") -> dict[str, list[str]]:
    """The grid arguments of ``pgprune compare`` (the common setting is added to each)."""
    def inits(*names: str) -> list[str]:
        return [arg for name in names for arg in ("--init", name)]

    both = ["--estimator", "reinforce", "--estimator", "none"]
    ch = ["--granularity", "channel,head"]
    length = ["--steps", str(steps)]
    return {
        "wanda-sp": [*both, *inits("wanda-sp"), *ch, "--rates", rates,
                   "--budget", "per-type", "--budget", "params", *length],
        "random-masks": ["--estimator", "none", *inits("random"), *ch, "--rates", rates,
                         "--budget", "per-type", "--budget", "params", *length],
        "starts": [*both, *inits("random", "magnitude", "taylor"), *ch, "--rates", rates,
                   "--budget", "per-type", *length],
        "progressive": ["--estimator", "reinforce", *inits("random"), *ch, "--rates", rates,
                        "--budget", "per-type", "--schedule", "random-progressive", *length],
        "layers": [*both, *inits("random", "layerwise-ppl", "taylor"), "--granularity", "layer",
                   "--rates", rates, "--budget", "per-type", *length],
        "budgets": ["--estimator", "reinforce", *inits("wanda-sp"), *ch, "--rates", "0.5",
                    "--budget", "global", "--budget", "local", *length],
        "baseline": ["--estimator", "reinforce", *inits("wanda-sp"), *ch, "--rates", "0.5",
                     "--budget", "per-type", *length, "--estimator.baseline", "none"],
        "estimators": ["--estimator", "reinforce", "--estimator", "gumbel", "--estimator", "ppo",
                       *inits("wanda-sp"), *ch, "--rates", "0.5", "--budget", "per-type",
                       "--seeds", seeds, *length, "--equal-forwards"],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_setting(parser)
    parser.add_argument("--grids", default=",".join(grids(0)),
                        help="comma-separated grids to run (default: all)")
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps per cell")
    parser.add_argument("--rates", default=RATES, help="prune rates of the rate grids")
    parser.add_argument("--seeds", default="0", help="seeds of the estimators grid")
    parser.add_argument("--work", default="runs/bench-quality",
                        help="directory of the grids (re-running continues them)")
    parser.add_argument("--extra", default="",
                        help="more pgprune compare options for every grid, one shell string")
    parser.add_argument("--shared", default=None,
                        help="one directory of dense metrics and initial scores for all grids "
                             "(each grid's shared/ links to it): a start is computed once")
    return parser.parse_args()


def common(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--calib-file", args.calib_file,
            "--data.calib_slice", args.calib_slice, "--data.eval", "[]",
            "--eval-file", args.eval_file, "--evaluator", "perplexity",
            "--output.save_model", "false", *shlex.split(args.extra)]


def run_grid(name: str, grid_args: list[str], args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.work) / name
    if args.shared:
        shared = Path(args.shared)
        shared.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "shared").exists():
            (out / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    command = ["pgprune", "compare", *common(args), *grid_args, "--out", str(out)]
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    started = time.perf_counter()
    # compare's tables and progress go to stderr: stdout is this script's JSON alone
    subprocess.run([sys.executable, "-m", "pgprune_core", *command[1:]], check=True,
                   stdout=sys.stderr)
    with (out / "compare.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"grid": name, "command": shlex.join(command), "rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if skipped_for_missing_assets(args):
        return
    available = grids(args.steps, args.rates, args.seeds)
    chosen = [g.strip() for g in args.grids.split(",") if g.strip()]
    unknown = [g for g in chosen if g not in available]
    if unknown:
        sys.exit(f"unknown grid(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    results = [run_grid(name, available[name], args) for name in chosen]
    print(json.dumps({"steps": args.steps, "grids": results}, indent=1))


if __name__ == "__main__":
    main()
