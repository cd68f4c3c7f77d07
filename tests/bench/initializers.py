"""Benchmark: every initializer ALONE as a pruning metric (``--estimator none``).

Each (initializer, rate) is one ordinary ``pgprune run`` (``run_pipeline`` with the config
the CLI would build): scores -> the budget's final mask -> surgery -> WikiText-2
perplexity.  Channels+heads for random, magnitude, wanda-sp and taylor; layers for
layerwise-ppl (and random, magnitude, taylor as its yardsticks).  Defaults are the proxy
setting of ``shared/REFERENCE.md``: proxy-llama-7m, calibration C4 docs 1800-1999,
evaluation WikiText-2 raw test at 128 tokens, per-type budget.

    python tests/bench/initializers.py > initializers.json
    python tests/bench/initializers.py --rates 0.5 --inits wanda-sp
    python tests/bench/initializers.py --kinds layer --inits layerwise-ppl --set init.n_sequences=128

Prints one JSON document: the dense perplexity, then per run its initializer,
granularity, rate, perplexity, parameters and the time spent scoring + evaluating.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _proxy import add_proxy_setting

CHANNELS_HEADS = ["wanda-sp", "random", "magnitude", "taylor"]
LAYERS = ["layerwise-ppl", "random", "magnitude", "taylor"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_setting(parser)
    parser.add_argument("--rates", default="0.3,0.4,0.5")
    parser.add_argument("--inits", default=None,
                        help="comma-separated subset of the initializers (default: all)")
    parser.add_argument("--kinds", default="channel,head;layer",
                        help="granularity settings separated by ';' (default: both)")
    parser.add_argument("--budget", default="per-type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="run directories (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted config override for every run, e.g. init.n_sequences=128")
    return parser.parse_args()


def run_one(args: argparse.Namespace, work: Path, init: str, granularity: str, rate: float,
            dense: bool) -> dict[str, Any]:
    from pgprune_core.config.resolve import parse_value, resolve_config
    from pgprune_core.run.pipeline import run_pipeline

    name = f"{init}-{granularity.replace(',', '+')}-{round(rate * 100)}"
    flat = {
        "model.name_or_path": args.model,
        "data.calib_file": args.calib_file,
        "data.calib_slice": args.calib_slice,
        "data.eval": [],
        "data.eval_files": [args.eval_file],
        "pruning.granularity": granularity,
        "pruning.prune_rate": rate,
        "pruning.budget": args.budget,
        "init.name": init,
        "estimator.name": "none",
        "training.seed": args.seed,
        "evaluation.evaluators": ["perplexity"],
        "evaluation.dense": dense,
        "output.dir": str(work / name),
        "output.overwrite": True,
        "output.save_model": False,
    }
    for item in args.set:
        key, _, value = item.partition("=")
        flat[key] = parse_value(value)
    started = time.perf_counter()
    result = run_pipeline(resolve_config(None, None, flat))
    metrics = result.metrics
    (ppl,) = metrics["pruned"]["ppl"].values()
    row = {
        "init": init,
        "granularity": granularity,
        "rate": rate,
        "ppl": round(float(ppl), 2),
        "params": metrics["pruned"]["params"],
        "units_kept": metrics["pruning"]["units_kept"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if dense:
        (dense_ppl,) = metrics["dense"]["ppl"].values()
        row["dense_ppl"] = round(float(dense_ppl), 2)
        row["dense_params"] = metrics["dense"]["params"]
    with (work / "rows.jsonl").open("a", encoding="utf-8") as log:  # partial results survive
        log.write(json.dumps(row) + "\n")
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for path in (args.model, args.calib_file, args.eval_file):
        if not Path(path).exists():
            sys.exit(f"missing benchmark asset: {path}")
    rates = [float(r) for r in args.rates.split(",")]
    chosen = set(args.inits.split(",")) if args.inits else None
    plan = []
    for granularity in args.kinds.split(";"):
        inits = LAYERS if granularity == "layer" else CHANNELS_HEADS
        plan += [(init, granularity, rate) for init in inits for rate in rates
                 if chosen is None or init in chosen]
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="pgprune-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, work_dir, init, granularity, rate, dense=(i == 0))
            for i, (init, granularity, rate) in enumerate(plan)]
    dense = {"ppl": rows[0].pop("dense_ppl"), "params": rows[0].pop("dense_params")} if rows else {}
    print(json.dumps({
        "model": args.model,
        "calibration": f"{args.calib_file} docs {args.calib_slice}",
        "evaluation": f"{args.eval_file}, windows of 128 tokens",
        "budget": args.budget,
        "estimator": "none",
        "seed": args.seed,
        "overrides": args.set,
        "dense": dense,
        "runs": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
