"""Benchmark: pruning quality on a real pretrained model, SmolLM2-135M-Instruct.

The model comes from ``shared/models/smollm2-135m`` (a GGUF file, converted once into
``~/.cache/pgprune-bench/smollm2-135m`` by its own ``to_hf.py``; needs ``pip install gguf``);
the script prints ``{"skipped": ...}`` without it.  Every grid is one ``pgprune compare``
command (printed before it runs) in ``WORK/<grid>``; all grids share one directory of dense
metrics and initial scores (``WORK/shared``), so each start is computed once, and re-running
continues unfinished grids.

Protocols (``--protocol``):

- ``cpu`` (this machine): calibration C4 validation docs 1800-1999, batch 4 x 128 tokens,
  ``--steps`` optimisation steps (default 200), Wanda-sp on 32 windows of 1,024 tokens,
  perplexity on the first 200 windows of 128 tokens of WikiText-2 raw test (25,400
  predicted tokens; the asset's stated dense perplexity is measured on the same windows).
- ``paper`` (a GPU): batch 8 x 128, one epoch of 120,000 random calibration segments (15,000
  steps) drawn from C4 validation docs 0-1999, Wanda-sp on the authors' 128 x 1,024, the
  whole WikiText-2 raw test; ``--device cuda``.

Grids (``--grids``, default all):

- ``metrics``: each metric alone (``--estimator none``: random, magnitude, taylor) at 30 / 50 %
  of channels + heads, ``per-type``; ``wanda-sp``: Wanda-sp alone, the same cells;
  ``reinforce``: reinforce (its defaults) from Wanda-sp at 30 % (at 50 %: ``paper-scaled``,
  the same method); ``params``: Wanda-sp
  alone and reinforce at 50 % under the ``params`` budget;
- ``starts``: reinforce from taylor (the best metric alone here) at 30 %;
- ``paper``: reinforce with ``--estimator.preset paper`` from Wanda-sp at 50 %;
  ``paper-scaled``: the same with the learning rate scaled to the run length;
- ``gumbel``: gumbel from Wanda-sp at 50 %, ``--gumbel-steps`` steps (equal wall time);
- ``layers``: 25 % of the layers: layerwise-ppl, taylor and random alone, reinforce from
  layerwise-ppl.

    OMP_NUM_THREADS=1 python tests/bench/smollm2.py --work runs/bench-smollm2 > smollm2.json

Results: ``docs/benchmarks.md``, "Quality on SmolLM2-135M".
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from _proxy import CALIB_FILE, EVAL_FILE, smollm2_dir
from quality import run_grid


def protocol_args(protocol: str, steps: int) -> tuple[str, list[str], list[str]]:
    """(calibration slice, options of every grid, options of the Wanda-sp grids)."""
    if protocol == "cpu":
        evaluators = "[{name: perplexity, max_windows: 200}]"
        return ("1800:2000", ["--batch-size", "4", "--steps", str(steps),
                              "--evaluation.evaluators", evaluators], ["--init.n_sequences", "32"])
    return ("0:2000", ["--batch-size", "8", "--data.n_segments", "120000", "--device", "cuda"], [])


def grids(gumbel_steps: int) -> dict[str, tuple[list[str], bool]]:
    """Grid -> (its pgprune compare options, whether it runs Wanda-sp)."""
    ch = ["--granularity", "channel,head"]
    return {
        "metrics": (["--estimator", "none", "--init", "random", "--init", "magnitude",
                     "--init", "taylor", *ch, "--rates", "0.3,0.5", "--budget", "per-type"], False),
        "wanda-sp": (["--estimator", "none", "--init", "wanda-sp", *ch, "--rates", "0.3,0.5",
                      "--budget", "per-type"], True),
        "reinforce": (["--estimator", "reinforce", "--init", "wanda-sp", *ch, "--rates", "0.3",
                       "--budget", "per-type"], True),
        "params": (["--estimator", "none", "--estimator", "reinforce", "--init", "wanda-sp", *ch,
                    "--rates", "0.5", "--budget", "params"], True),
        "starts": (["--estimator", "reinforce", "--init", "taylor", *ch,
                    "--rates", "0.3", "--budget", "per-type"], False),
        "paper": (["--estimator", "reinforce", "--init", "wanda-sp", *ch, "--rates", "0.5",
                   "--budget", "per-type", "--estimator.preset", "paper"], True),
        # the paper's step with the learning rate scaled to the run length (x15 here): the
        # reinforce defaults before the pgprune preset
        "paper-scaled": (["--estimator", "reinforce", "--init", "wanda-sp", *ch, "--rates", "0.5",
                          "--budget", "per-type", "--estimator.preset", "paper",
                          "--estimator.scale_lr_to_steps", "true"], True),
        "gumbel": (["--estimator", "gumbel", "--init", "wanda-sp", *ch, "--rates", "0.5",
                    "--budget", "per-type", "--steps", str(gumbel_steps)], True),
        "layers": (["--estimator", "none", "--init", "layerwise-ppl", "--init", "taylor",
                    "--init", "random", "--granularity", "layer", "--rates", "0.25",
                    "--budget", "per-type"], False),
        "layers-reinforce": (["--estimator", "reinforce", "--init", "layerwise-ppl",
                              "--granularity", "layer", "--rates", "0.25",
                              "--budget", "per-type"], False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps (cpu)")
    parser.add_argument("--gumbel-steps", type=int, default=70,
                        help="gumbel's steps: about the wall time of reinforce's --steps")
    parser.add_argument("--grids", default=None, help="comma-separated grids (default: all)")
    parser.add_argument("--work", default="runs/bench-smollm2")
    parser.add_argument("--extra", default="", help="more pgprune compare options, one string")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = smollm2_dir()
    missing = [str(p) for p in (CALIB_FILE, EVAL_FILE) if not p.exists()]
    if model is None or missing:
        reason = "SmolLM2 asset or the gguf package" if model is None else ", ".join(missing)
        print(json.dumps({"skipped": f"missing benchmark asset: {reason}"}))
        return
    available = grids(args.gumbel_steps)
    chosen = [g.strip() for g in (args.grids or ",".join(available)).split(",") if g.strip()]
    unknown = [g for g in chosen if g not in available]
    if unknown:
        sys.exit(f"unknown grid(s) {', '.join(unknown)}; choose from {', '.join(available)}")
    calib_slice, every, wanda = protocol_args(args.protocol, args.steps)
    work = Path(args.work) / args.protocol
    setting = argparse.Namespace(model=str(model), calib_file=str(CALIB_FILE),
                                 calib_slice=calib_slice, eval_file=str(EVAL_FILE),
                                 work=str(work), shared=str(work / "shared"))
    results: list[dict[str, Any]] = []
    for name in chosen:
        grid_args, uses_wanda = available[name]
        # a grid's own --steps (gumbel) comes after the protocol's and wins
        setting.extra = shlex.join([*every, *(wanda if uses_wanda else [])]) + " " + args.extra
        results.append(run_grid(name, grid_args, setting))
    print(json.dumps({"protocol": args.protocol, "grids": results}, indent=1))


if __name__ == "__main__":
    main()
