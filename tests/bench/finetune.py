"""Benchmark: recovery fine-tuning (``pgprune finetune``), next-token loss vs distillation.

Every cell is one ``pgprune run`` or ``pgprune finetune`` command (printed before it runs)
in ``WORK/...``; re-running the script reuses finished cells and resumes unfinished
fine-tunes.  Text: the fine-tunes train on C4 validation documents 1800-1949 (held out from
the proxy's training) and are scored on WikiText-2 raw test (windows of 128 tokens) and on
C4 documents 1950-1999 (``WORK/c4-heldout.jsonl``, written here: held out from the proxy's
training and from every fine-tune, the training text's own domain).  The pruning runs
calibrate on documents 1800-1999 (the setting of ``_proxy.py``).

Stages (``--stages``, default all):

- ``lr``: proxy-llama-7m pruned 50 % (channels + heads, the default ``pgprune run``:
  reinforce from Wanda-sp, ``--prune-steps`` steps), ``ce`` and ``kl`` at each of ``--lrs``
  for ``--lr-steps`` steps of 4 x 128 tokens, scored on the C4 held-out text only.  Each
  objective's learning rate is picked by its own training loss (the mean of the last 20
  steps: every batch is new text within the first epoch) and printed as ``picked``.
- ``proxy``: the proxy pruned 30 % and 50 %, each objective (``ce``, ``kl``, ``mix``) at
  ``--lr`` (5e-3, the ``lr`` stage's pick) for ``--steps`` steps (equal steps), and ``ce``
  at ``--old-lrs`` (2e-4, the earlier default) at 50 %; scored on both texts in full; the
  dense model is measured once (in the first cell).
- ``smollm2``: SmolLM2-135M-Instruct pruned 30 % of channels + heads cheaply
  (``--estimator none --init taylor``); a learning-rate check (``ce`` at each of
  ``--smollm2-lrs`` for ``--smollm2-lr-steps`` steps of 2 x 128 tokens, no evaluation,
  picked by the training loss of the last half of the steps, the same batches for every
  rate); then each objective for ``--smollm2-steps`` steps at the picked rate, scored on
  the first 200 windows of WikiText-2 raw test (the protocol of ``smollm2.py``, whose
  dense perplexity is 51.21).

    OMP_NUM_THREADS=1 python tests/bench/finetune.py --work runs/bench-finetune > finetune.json

Results: ``docs/benchmarks.md``, "Recovery fine-tuning".
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _proxy import CALIB_FILE, EVAL_FILE, PROXY_MODEL, smollm2_dir

TRAIN_SLICE = "1800:1950"
HELDOUT_DOCS = (1950, 2000)
PRUNE_SLICE = "1800:2000"
TAIL = 20  # training-loss steps averaged to pick a learning rate


def heldout_text(work: Path) -> Path:
    """C4 documents 1950-1999 as a JSONL evaluation file (written once)."""
    path = work / "c4-heldout.jsonl"
    if not path.is_file():
        with gzip.open(CALIB_FILE, "rt", encoding="utf-8") as handle:
            docs = [line for i, line in enumerate(handle) if HELDOUT_DOCS[0] <= i < HELDOUT_DOCS[1]]
        work.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": json.loads(d)["text"]}) + "\n" for d in docs),
                        encoding="utf-8")
    return path


def pgprune(command: list[str]) -> float:
    """Run ``pgprune COMMAND`` (its output to stderr: stdout is this script's JSON); wall s."""
    print("$ pgprune " + shlex.join(command), file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pgprune_core", *command], check=True, stdout=sys.stderr)
    return round(time.perf_counter() - started, 1)


def prune(model: str, out: Path, rate: float, options: list[str]) -> dict[str, Any]:
    command = ["run", "--model", model, "--calib-file", str(CALIB_FILE),
               "--data.calib_slice", PRUNE_SLICE, "--data.eval", "[]",
               "--evaluation.evaluators", "[]", "--prune-rate", str(rate),
               "--training.threads", "1", *options, "--out", str(out)]
    marker = out / "run.json"
    done = marker.is_file() and json.loads(marker.read_text()).get("status") == "done"
    if not done:
        pgprune(command)
    metrics = json.loads((out / "metrics.json").read_text())
    run = metrics["run"]
    return {"command": "pgprune " + shlex.join(command), "rate": rate,
            "params_dense": metrics["dense"]["params"], "params": metrics["pruned"]["params"],
            "optimize_s": run["optimize_s"], "wall_s": run["wall_s"],
            "peak_memory_gb": round(run["peak_memory_bytes"] / 1e9, 3)}


def finetune(source: Path, out: Path, objective: str, lr: float, steps: int, batch: int,
             eval_files: list[Path], options: list[str]) -> dict[str, Any]:
    command = ["finetune", str(source), "--train-file", str(CALIB_FILE),
               "--data.train_slice", TRAIN_SLICE, "--objective", objective,
               "--steps", str(steps), "--training.batch_size", str(batch),
               "--data.seq_len", "128", "--training.lr", str(lr), "--training.threads", "1",
               *[part for f in eval_files for part in ("--eval-file", str(f))], *options,
               "--out", str(out)]
    marker = out / "finetune.json"
    status = json.loads(marker.read_text()).get("status") if marker.is_file() else None
    if status != "done":
        pgprune(["resume", str(out)] if marker.is_file() else command)
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    log = log[-min(TAIL, max(1, len(log) // 2)):]  # the tail: at most the last half
    tail = [r["loss"] for r in log]
    run = metrics["finetune"]
    return {"command": "pgprune " + shlex.join(command), "objective": objective, "lr": lr,
            "steps": run["steps"], "ppl_before": metrics["before"].get("ppl"),
            "ppl_after": metrics["after"].get("ppl"),
            "ppl_dense": (metrics.get("teacher") or {}).get("ppl"),
            "params": metrics["after"]["params"], "trainable": run["trainable_params"],
            "targets": run["target_modules"], "first_loss": run["first_loss"],
            "tail_loss": sum(tail) / len(tail), "tail_ce": sum(r["ce"] for r in log) / len(tail),
            "train_s": run["train_s"], "wall_s": run["wall_s"],
            "peak_memory_gb": round(run["peak_memory_bytes"] / 1e9, 3),
            "peak_memory_method": run["peak_memory_method"]}


def stage_lr(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pruned = prune(str(PROXY_MODEL), work / "proxy" / "prune-50", 0.5,
                   ["--steps", str(args.prune_steps)])
    cells = [finetune(pruned_dir(work, 50), work / "proxy" / "lr" / f"{objective}-lr{lr}",
                      objective, lr, args.lr_steps, 4, [heldout_text(work)],
                      ["--evaluation.teacher", "false"])
             for objective in args.objectives or ("ce", "kl") for lr in args.lrs]
    picked = {objective: min((c for c in cells if c["objective"] == objective),
                             key=lambda c: c["tail_loss"])["lr"]
              for objective in args.objectives or ("ce", "kl")}
    return {"stage": "lr", "prune": pruned, "cells": cells, "picked": picked}


def pruned_dir(work: Path, rate: int) -> Path:
    return work / "proxy" / f"prune-{rate}"


def dense_measured(cells: Path) -> bool:
    """Whether a finished cell under ``cells`` measured the dense model."""
    return any("teacher" in json.loads(m.read_text()) for m in cells.glob("*/metrics.json"))


def stage_proxy(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs, cells = [], []
    grid = work / "proxy" / "grid"
    plan = [(rate, objective, args.lr) for rate in args.rates
            for objective in args.objectives or ("ce", "kl", "mix")]
    plan += [(max(args.rates), "ce", lr) for lr in args.old_lrs]
    plan = list(dict.fromkeys(plan))
    for rate in args.rates:
        runs.append(prune(str(PROXY_MODEL), pruned_dir(work, rate), rate / 100,
                          ["--steps", str(args.prune_steps)]))
    for rate, objective, lr in plan:
        out = grid / f"{rate}-{objective}-lr{lr}"
        dense = not out.exists() and not dense_measured(grid)
        cells.append(dict(rate=rate, **finetune(
            pruned_dir(work, rate), out, objective, lr, args.steps, 4,
            [EVAL_FILE, heldout_text(work)], ["--evaluation.teacher", str(dense).lower()])))
    return {"stage": "proxy", "prune": runs, "cells": cells}


def stage_smollm2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = smollm2_dir()
    if model is None:
        return {"stage": "smollm2", "skipped": "missing benchmark asset: SmolLM2 asset or the gguf package"}
    out = work / "smollm2" / "prune-30"
    pruned = prune(str(model), out, 0.3, ["--estimator", "none", "--init", "taylor",
                                          "--granularity", "channel,head"])
    check = [finetune(out, work / "smollm2" / "lr" / f"ce-lr{lr}", "ce", lr, args.smollm2_lr_steps,
                      2, [], ["--evaluation.teacher", "false"]) for lr in args.smollm2_lrs]
    lr = min(check, key=lambda c: c["tail_loss"])["lr"] if check else args.lr
    cells = [finetune(out, work / "smollm2" / f"{objective}-lr{lr}", objective, lr,
                      args.smollm2_steps, 2, [EVAL_FILE],
                      ["--evaluation.max_windows", "200", "--evaluation.teacher", "false"])
             for objective in args.objectives or ("ce", "kl")]
    return {"stage": "smollm2", "prune": pruned, "lr_check": check, "picked": lr, "cells": cells}


STAGES = {"lr": stage_lr, "proxy": stage_proxy, "smollm2": stage_smollm2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-finetune")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--objectives", default="",
                        help="comma-separated: ce, kl, mix (default: ce,kl; proxy: ce,kl,mix)")
    parser.add_argument("--lrs", default="2e-4,1e-3,5e-3,2e-2", help="learning rates of the lr stage")
    parser.add_argument("--lr-steps", type=int, default=100, help="steps of an lr-stage cell")
    parser.add_argument("--lr", type=float, default=5e-3, help="learning rate of the proxy stage")
    parser.add_argument("--old-lrs", default="2e-4",
                        help="proxy stage: also ce at these rates, at the highest prune rate")
    parser.add_argument("--steps", type=int, default=200, help="steps of a proxy cell")
    parser.add_argument("--rates", default="30,50", help="prune rates (%%) of the proxy stage")
    parser.add_argument("--smollm2-steps", type=int, default=40, help="steps of a SmolLM2 cell")
    parser.add_argument("--smollm2-lrs", default="2e-4,1e-3,5e-3",
                        help="learning rates of the SmolLM2 check (ce; empty: --lr)")
    parser.add_argument("--smollm2-lr-steps", type=int, default=20, help="steps of a check cell")
    parser.add_argument("--prune-steps", type=int, default=200, help="reinforce steps (proxy)")
    args = parser.parse_args()
    args.objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    args.lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    args.smollm2_lrs = [float(v) for v in args.smollm2_lrs.split(",") if v.strip()]
    args.old_lrs = [float(v) for v in args.old_lrs.split(",") if v.strip()]
    args.rates = [int(v) for v in args.rates.split(",") if v.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    missing = [str(p) for p in (PROXY_MODEL, CALIB_FILE, EVAL_FILE) if not p.exists()]
    if missing:
        print(json.dumps({"skipped": f"missing benchmark asset: {', '.join(missing)}"}))
        return
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        sys.exit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    work = Path(args.work)
    results = [STAGES[name](args, work) for name in chosen]
    print(json.dumps({"stages": results}, indent=1))


if __name__ == "__main__":
    main()
