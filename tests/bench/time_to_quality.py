"""Benchmark: time to quality -- perplexity against wall time and forward passes, per estimator.

Each estimator runs from the same start (initial scores and dense metrics computed once: the
grids share one ``shared/`` directory) with ``--training.snapshot_every``, so the run keeps
its probabilities every K steps together with that step's record (optimisation seconds,
forward and backward passes).  Every snapshot is then turned into the budget's final mask,
cut out of a fresh copy of the model by the same surgery a run uses, and scored on the first
``--windows`` evaluation windows; the last snapshot of each run is its run's own final mask.

    OMP_NUM_THREADS=1 python tests/bench/time_to_quality.py \\
        --estimator reinforce:3000 --estimator gumbel:1000 --estimator ppo:500 \\
        --snapshot-every 100 --windows 400 --work runs/bench-ttq/proxy

``NAME:STEPS`` gives each estimator its own length (equal wall time rather than equal
steps); ``--extra`` passes more ``pgprune compare`` options to every grid.  Estimators
measured by earlier invocations with the same WORK stay in the JSON and the figure, so the
estimators can run one at a time.  Prints one JSON
document (per estimator: command and points ``{step, optimize_s, forward_passes,
backward_passes, ppl}``) and writes ``time_to_quality.png`` (two panels: perplexity against
optimisation seconds and against forward passes) and ``time_to_quality.json`` into WORK.
Results: ``docs/benchmarks.md``, "Time to quality".
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from _proxy import add_proxy_setting, skipped_for_missing_assets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_proxy_setting(parser)
    parser.add_argument("--estimator", action="append", required=True,
                        help="NAME:STEPS (repeatable)")
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--windows", type=int, default=400,
                        help="evaluation windows per snapshot (the first N)")
    parser.add_argument("--rate", default="0.5")
    parser.add_argument("--init", default="wanda-sp")
    parser.add_argument("--work", default="runs/bench-ttq/proxy")
    parser.add_argument("--extra", default="", help="more pgprune compare options, one string")
    return parser.parse_args()


def run_grid(name: str, steps: int, args: argparse.Namespace) -> tuple[str, Path]:
    work = Path(args.work)
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    shared = work / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    if not (out / "shared").exists():
        (out / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    command = ["pgprune", "compare", "--model", args.model, "--calib-file", args.calib_file,
               "--data.calib_slice", args.calib_slice, "--data.eval", "[]",
               "--eval-file", args.eval_file, "--evaluator", "perplexity",
               "--output.save_model", "false", "--estimator", name, "--init", args.init,
               "--granularity", "channel,head", "--rates", args.rate, "--budget", "per-type",
               "--steps", str(steps), "--training.snapshot_every", str(args.snapshot_every),
               *shlex.split(args.extra), "--out", str(out)]
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "pgprune_core", *command[1:]], check=True,
                   stdout=sys.stderr)
    cells = sorted((out / "runs").iterdir())
    if len(cells) != 1:
        raise SystemExit(f"expected one cell in {out / 'runs'}, found {len(cells)}")
    return shlex.join(command), cells[0]


def cut_and_evaluate(cell: Path, evaluators: list[dict[str, Any]], keep_of: Any,
                     label: str = "pruned") -> dict[str, Any]:
    """The metrics of ``evaluators`` (evaluator config entries) on the model of run ``cell``
    cut by ``keep_of(prep)`` (a keep mask in the run's unit layout) from a fresh copy of
    the model, by the surgery a run uses; ``keep_of`` None measures the uncut model."""
    from pgprune_core.config.resolve import load_config_file, validate_config
    from pgprune_core.model.surgery import prune_model
    from pgprune_core.plugin.registry import get_registry
    from pgprune_core.report.progress import SilentReporter
    from pgprune_core.run.pipeline import evaluate, prepare
    from pgprune_core.run.rundir import RunDir

    registry = get_registry()
    raw = load_config_file(RunDir(cell).config)
    raw["evaluation"]["evaluators"] = evaluators
    config = validate_config(raw, registry)
    reporter = SilentReporter()
    prep = prepare(config, registry, reporter)
    if keep_of is not None:
        prune_model(prep.structure, prep.layout, prep.granularities, keep_of(prep))
    return evaluate(config, prep.loaded.model, prep.loaded.tokenizer, label, registry, reporter)


def snapshot_points(cell: Path, windows: int) -> list[dict[str, Any]]:
    """Perplexity of every snapshot's final mask, cut from a fresh copy of the model."""
    from pgprune_core.run.rundir import RunDir

    points = []
    for probs, record in RunDir(cell).read_snapshots():
        metrics = cut_and_evaluate(cell, [{"name": "perplexity", "max_windows": windows}],
                                   lambda prep, probs=probs: prep.budget.final_mask(probs))
        ppl = next(iter(metrics["ppl"].values()))
        points.append({key: record.get(key) for key in
                       ("step", "optimize_s", "forward_passes", "backward_passes")} | {"ppl": ppl})
        print(f"{cell.name} step {record['step']}: {ppl:.2f}", file=sys.stderr, flush=True)
    return points


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_forwards) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, result in results.items():
        points = result["points"]
        ppl = [p["ppl"] for p in points]
        by_time.plot([p["optimize_s"] for p in points], ppl, marker=".", label=name)
        by_forwards.plot([p["forward_passes"] for p in points], ppl, marker=".", label=name)
    by_time.set_xlabel("optimisation seconds")
    by_forwards.set_xlabel("forward passes of the batch")
    by_time.set_ylabel(f"perplexity (first {results[next(iter(results))]['windows']} windows)")
    values = [p["ppl"] for result in results.values() for p in result["points"]]
    for axis in (by_time, by_forwards):
        if max(values) > 10 * min(values):  # estimators orders of magnitude apart
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if skipped_for_missing_assets(args):
        return
    work = Path(args.work)
    saved = work / "time_to_quality.json"
    # estimators measured by earlier invocations in the same WORK stay in the table and plot
    results: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}
    for spec in args.estimator:
        name, _, steps = spec.partition(":")
        command, cell = run_grid(name, int(steps or 1000), args)
        results[name] = {"command": command, "windows": args.windows,
                         "points": snapshot_points(cell, args.windows)}
    saved.write_text(json.dumps(results, indent=1))
    plot(results, work / "time_to_quality.png")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
