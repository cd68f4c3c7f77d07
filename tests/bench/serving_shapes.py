"""Benchmark: what serving-friendly shapes cost in quality, against free per-layer shapes.

The ``hf`` export needs ``--pruning.shape uniform`` and the ``decilm`` export
``uniform-heads`` (and ``--pruning.channel_multiple 256`` for widths every engine reads
exactly); this measures the perplexity each constraint costs.  One ``pgprune compare`` grid
per shape (``--shapes``, default all), channels+heads, per-type budget, the rates of
``--rates``, in ``WORK/<model>/shape-<name>``; all grids of a model share one directory of
dense metrics and initial scores (``WORK/<model>/shared``, ``--shared`` to name another), so
each start is computed once, and re-running continues unfinished grids.

Shapes: ``free``, ``uniform-heads``, ``uniform``, and ``uniform-heads`` with
``--pruning.channel_multiple`` 64 and 256 (``--multiples``; the proxy's MLP is 688 channels
wide, so 256 allows only 0, 256 or 512 channels per layer there).

Models (``--model-set``):

- ``proxy``: the setting of ``quality.py`` (``shared/REFERENCE.md``); reinforce from
  wanda-sp (its defaults, ``--steps``, default 1,000) and wanda-sp alone
  (``--estimators``, default ``reinforce,none``).
- ``smollm2``: SmolLM2-135M with the CPU protocol of ``smollm2.py`` (batch 4 x 128,
  Wanda-sp on 32 windows of 1,024 tokens, perplexity on the first 200 windows of 128
  tokens); the initializers of ``--inits`` alone (default taylor, the best metric alone on
  that model, and wanda-sp), and reinforce from the first of them only with
  ``--reinforce`` (about 4 s per step on one core: ``--steps`` is 200 by default there).

    python tests/bench/serving_shapes.py --work runs/bench-shapes > shapes-proxy.json
    python tests/bench/serving_shapes.py --model-set smollm2 --work runs/bench-shapes > shapes-smollm2.json

Prints one JSON document: per shape its command and the rows of its ``compare.csv``.
Cost on one CPU core (proxy): per shape one wanda-sp grid of ``quality.py`` at two rates,
about 10 minutes; SmolLM2, metrics alone: about 2 minutes per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from _proxy import CALIB_FILE, EVAL_FILE, add_proxy_setting, skipped_for_missing_assets, smollm2_dir
from quality import run_grid
from smollm2 import protocol_args

RATES = "0.3,0.5"


def shapes(multiples: list[int]) -> dict[str, list[str]]:
    """Shape name -> the pruning options that make it."""
    named = {
        "free": ["--pruning.shape", "free"],
        "uniform-heads": ["--pruning.shape", "uniform-heads"],
        "uniform": ["--pruning.shape", "uniform"],
    }
    for multiple in multiples:
        named[f"uniform-heads-x{multiple}"] = ["--pruning.shape", "uniform-heads",
                                               "--pruning.channel_multiple", str(multiple)]
    return named


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_setting(parser)
    parser.add_argument("--model-set", choices=("proxy", "smollm2"), default="proxy")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimisation steps per reinforce cell (proxy 1000, smollm2 200)")
    parser.add_argument("--rates", default=RATES, help="prune rates")
    parser.add_argument("--multiples", default="64,256", help="pruning.channel_multiple values")
    parser.add_argument("--shapes", default=None, help="comma-separated shapes (default: all)")
    parser.add_argument("--estimators", default="reinforce,none",
                        help="proxy: the estimators of every grid (none: wanda-sp alone)")
    parser.add_argument("--inits", default="taylor,wanda-sp", help="smollm2: metrics alone")
    parser.add_argument("--reinforce", action="store_true",
                        help="smollm2: reinforce from the first of --inits as well")
    parser.add_argument("--work", default="runs/bench-shapes")
    parser.add_argument("--shared", default=None,
                        help="directory of dense metrics and initial scores (default WORK/MODEL/shared)")
    parser.add_argument("--extra", default="", help="more pgprune compare options, one shell string")
    return parser.parse_args()


def setting(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]] | None:
    """(the grid setting run_grid reads, the compare options of every grid); None to skip."""
    work = Path(args.work) / args.model_set
    shared = args.shared or str(work / "shared")
    if args.model_set == "proxy":
        if skipped_for_missing_assets(args):
            return None
        steps = 1000 if args.steps is None else args.steps
        estimators = [name.strip() for name in args.estimators.split(",") if name.strip()]
        grid = [*(arg for name in estimators for arg in ("--estimator", name)),
                "--init", "wanda-sp", "--steps", str(steps)]
        return argparse.Namespace(**{**vars(args), "work": str(work), "shared": shared}), grid
    model = smollm2_dir()
    missing = [str(p) for p in (CALIB_FILE, EVAL_FILE) if not p.exists()]
    if model is None or missing:
        reason = "SmolLM2 asset or the gguf package" if model is None else ", ".join(missing)
        print(json.dumps({"skipped": f"missing benchmark asset: {reason}"}))
        return None
    calib_slice, every, wanda = protocol_args("cpu", 200 if args.steps is None else args.steps)
    inits = [name.strip() for name in args.inits.split(",") if name.strip()]
    uses_wanda = "wanda-sp" in inits
    extra = shlex.join([*every, *(wanda if uses_wanda else [])]) + " " + args.extra
    grid = ["--estimator", "none", *(["--estimator", "reinforce"] if args.reinforce else [])]
    grid += [arg for name in inits for arg in ("--init", name)]
    if args.reinforce and len(inits) > 1:
        sys.exit("--reinforce runs from one start: give --inits one initializer")
    return argparse.Namespace(model=str(model), calib_file=str(CALIB_FILE),
                              calib_slice=calib_slice, eval_file=str(EVAL_FILE),
                              work=str(work), shared=shared, extra=extra), grid


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    made = setting(args)
    if made is None:
        return
    grid_setting, grid = made
    available = shapes([int(m) for m in args.multiples.split(",") if m.strip()])
    chosen = [s.strip() for s in (args.shapes or ",".join(available)).split(",") if s.strip()]
    unknown = [s for s in chosen if s not in available]
    if unknown:
        sys.exit(f"unknown shape(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    common = [*grid, "--granularity", "channel,head", "--rates", args.rates,
              "--budget", "per-type"]
    results = [run_grid(f"shape-{name}", [*common, *available[name]], grid_setting)
               for name in chosen]
    print(json.dumps({"model_set": args.model_set, "grids": results}, indent=1))


if __name__ == "__main__":
    main()
