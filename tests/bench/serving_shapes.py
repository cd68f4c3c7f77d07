"""Benchmark (not run yet): what serving-friendly shapes cost in quality on the proxy model.

The ``hf`` export needs ``--pruning.shape uniform`` and the ``decilm`` export
``uniform-heads`` (and ``--pruning.channel_multiple 256`` for widths every engine reads
exactly); this measures the perplexity each constraint costs against free per-layer shapes.
One ``pgprune compare`` grid per shape (reinforce from wanda-sp and wanda-sp alone,
channels+heads, per-type budget, the rates of ``--rates``), in ``WORK/shape-<name>``; the
setting is ``quality.py``'s (``shared/REFERENCE.md``).  ``channel_multiple`` is 16 by default:
the proxy's MLP is 688 channels wide, where 256 would allow only 0, 256 or 512 per layer;
pass ``--multiple 256`` on a real model.

    python tests/bench/serving_shapes.py --work runs/bench-shapes > shapes.json

Prints one JSON document: per shape its command and the rows of its ``compare.csv``.
Cost on one CPU core: about that of quality.py's ``wanda-sp`` grid per shape.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _proxy import add_proxy_setting
from quality import RATES, run_grid


def shapes(multiple: int) -> dict[str, list[str]]:
    """Shape name -> the pruning options that make it."""
    return {
        "free": ["--pruning.shape", "free"],
        "uniform-heads": ["--pruning.shape", "uniform-heads"],
        "uniform": ["--pruning.shape", "uniform"],
        "uniform-heads-multiple": ["--pruning.shape", "uniform-heads",
                                   "--pruning.channel_multiple", str(multiple)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_setting(parser)
    parser.add_argument("--steps", type=int, default=1000, help="optimisation steps per cell")
    parser.add_argument("--rates", default=RATES, help="prune rates")
    parser.add_argument("--multiple", type=int, default=16, help="pruning.channel_multiple")
    parser.add_argument("--work", default="runs/bench-shapes")
    parser.add_argument("--extra", default="", help="more pgprune compare options, one shell string")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for path in (args.model, args.calib_file, args.eval_file):
        if not Path(path).exists():
            print(json.dumps({"skipped": f"missing benchmark asset: {path}"}))
            return
    grid = ["--estimator", "reinforce", "--estimator", "none", "--init", "wanda-sp",
            "--granularity", "channel,head", "--rates", args.rates, "--budget", "per-type",
            "--steps", str(args.steps)]
    results = [run_grid(f"shape-{name}", [*grid, *options], args)
               for name, options in shapes(args.multiple).items()]
    print(json.dumps({"steps": args.steps, "grids": results}, indent=1), file=sys.stdout)


if __name__ == "__main__":
    main()
