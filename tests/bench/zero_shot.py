"""Benchmark: zero-shot accuracy (lm-eval) of a dense model and of pruned runs, offline.

lm-eval's built-in tasks download their datasets from the Hugging Face hub; this script
builds a local multiple-choice task instead, ``c4_continuation``, and runs it through the
project's ``lm-eval`` evaluator (lm-evaluation-harness, ``include_path``):

- each question is a C4 validation document (docs ``--docs``, by default 0-1199: not the
  calibration slice 1800-1999 of the benchmarks) cut into sentences: the context is its
  first two sentences, the right answer its third, and the three wrong answers are third
  sentences of three other documents drawn with a fixed seed (HellaSwag's form: pick the
  real continuation); documents with fewer than three sentences of 4-60 words are skipped;
- ``acc`` compares the summed log-likelihoods of the four endings, ``acc_norm`` the
  log-likelihoods per byte (lm-eval's definitions); chance is 0.25.

The dense model is the base model of the first run; each run (``--run``, a finished run
directory, e.g. a cell of a ``pgprune compare`` grid, with or without a saved model) is
measured on its final mask (``masks.json``) cut from a fresh copy of the model.

    OMP_NUM_THREADS=1 python tests/bench/zero_shot.py --run RUN_DIR [--run ...] \\
        --questions 400 --work runs/bench-zero-shot > zero_shot.json

Prints one JSON document: the task (name, size, the data file's sha256) and per model its
``zero_shot`` numbers, parameters and perplexity where the run measured it.
Results: ``docs/benchmarks.md``, "Quality on SmolLM2-135M".
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Any

from _proxy import CALIB_FILE
from time_to_quality import cut_and_evaluate

TASK = "c4_continuation"
SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")

TASK_YAML = """\
# Built by tests/bench/zero_shot.py from C4 validation documents: pick the real third
# sentence of a document among four (three are other documents' third sentences).
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE.split(" ".join(text.split())) if s.strip()]


def build_questions(path: Path, first: int, last: int, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` questions from documents ``first:last`` of the C4 JSON-lines file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        docs = [json.loads(line)["text"] for i, line in enumerate(handle) if first <= i < last]
    usable = []
    for text in docs:
        parts = sentences(text)[:3]
        if len(parts) == 3 and all(4 <= len(p.split()) <= 60 for p in parts):
            usable.append(parts)
    rng = random.Random(seed)
    questions = []
    for i, (one, two, three) in enumerate(usable[:n]):
        others = rng.sample([j for j in range(len(usable)) if j != i], 3)
        choices = [" " + three] + [" " + usable[j][2] for j in others]
        order = list(range(4))
        rng.shuffle(order)
        questions.append({"context": f"{one} {two}", "choices": [choices[k] for k in order],
                          "label": order.index(0)})
    return questions


def write_task(work: Path, questions: list[dict[str, Any]]) -> tuple[Path, str]:
    tasks = work / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    data = tasks / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data.resolve()))
    return tasks, hashlib.sha256(data.read_bytes()).hexdigest()


def keep_from_masks(run: Path) -> Any:
    """``keep_of(prep)`` for :func:`cut_and_evaluate`: the run's final mask (masks.json)."""
    import torch

    kinds = json.loads((run / "masks.json").read_text())["kinds"]

    def keep_of(prep: Any) -> Any:
        return torch.cat([torch.tensor(kinds[unit_set.kind]["keep"], dtype=torch.bool)
                          for unit_set in prep.layout])

    return keep_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="run directory (repeatable)")
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--docs", default="0:1200", help="C4 validation documents to draw from")
    parser.add_argument("--calib-file", default=str(CALIB_FILE))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense model")
    parser.add_argument("--work", default="runs/bench-zero-shot")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = [Path(r) for r in args.run]
    missing = [str(p) for p in [Path(args.calib_file), *[r / "masks.json" for r in runs]]
               if not p.exists()]
    if missing:
        print(json.dumps({"skipped": f"missing: {', '.join(missing)}"}))
        return
    first, last = (int(v) for v in args.docs.split(":"))
    questions = build_questions(Path(args.calib_file), first, last, args.questions)
    tasks, digest = write_task(Path(args.work), questions)
    evaluators = [{"name": "lm-eval", "tasks": [TASK], "include_path": [str(tasks)],
                   "include_defaults": False, "batch_size": args.batch_size}]
    results: dict[str, Any] = {
        "task": {"name": TASK, "questions": len(questions), "choices": 4, "chance": 0.25,
                 "source": f"{Path(args.calib_file).name} docs {args.docs}", "sha256": digest},
        "models": {},
    }
    if not args.no_dense:
        print("dense ...", file=sys.stderr, flush=True)
        dense = cut_and_evaluate(runs[0], evaluators, None, label="dense")
        results["models"]["dense"] = {"params": dense["params"], "zero_shot": dense["zero_shot"]}
    for run in runs:
        print(f"{run} ...", file=sys.stderr, flush=True)
        metrics = cut_and_evaluate(run, evaluators, keep_from_masks(run))
        ppl = json.loads((run / "metrics.json").read_text())["pruned"].get("ppl")
        results["models"][str(run)] = {"params": metrics["params"], "ppl": ppl,
                                       "zero_shot": metrics["zero_shot"]}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
