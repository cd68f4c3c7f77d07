"""``pgprune compare``: the same pruning run across estimators, seeds and rates (an ablation grid).

A grid ``estimators x seeds x rates x inits x budgets`` becomes one *cell* per combination,
and every cell is an ordinary run directory under ``OUT/runs/`` (so ``pgprune resume`` works
on it and its report, masks and model are the usual ones).  What the cells have in common
is computed once, before any cell runs, and handed to each cell as the files a resumed run
reuses instead of recomputing:

- the dense model's metrics (``dense.json``), one per (model, data, evaluation) setting;
- the initial scores (``init_scores.pt``), one per (initializer, seed): they do not depend
  on the estimator, the rate or the budget.

Tokenised corpora are shared through the data cache as in any run.  The model itself is
loaded by every cell: each cell cuts its model physically, so each needs a pristine copy,
and loading one from disk costs about what a deep copy would while keeping the cell an
ordinary run.

By default each cell runs in its own process (``pgprune resume CELL``): its wall time and
peak memory are then its own, not inflated or hidden by what earlier cells left in the
allocator (on CPU the peak is the process's resident set).  ``isolate=False`` runs the
cells in this process instead (faster to start; for tests and quick looks).

Resuming: a cell whose run is done is not run again; an unfinished one continues from its
checkpoint; so a killed ``pgprune compare`` re-run with the same arguments picks up where
it stopped.  A cell directory made with other settings is refused, never overwritten.

Equal budgets (``equal_forwards``): every estimator gets the same number of forward passes
of the model, ``F = steps x n_samples`` of the first estimator listed; an estimator that
evaluates ``k`` masks per step (its ``n_samples``: reinforce's N_s, ppo's M, gumbel's N)
runs ``round(F / k)`` steps.  Backward passes (gumbel's) are not counted in ``F``: the
table reports them, and the time and memory they cost, beside it.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from pgprune_core.compare.grid import (
    FORMAT,
    Cell,
    CellFailedError,
    CompareRequest,
    GridAxes,
    build_cells,
    cell_status,
)
from pgprune_core.compare.plots import plot_loss_curves, plot_sparsity_by_estimator
from pgprune_core.compare.report import collect, summarise, write_csv, write_markdown
from pgprune_core.config.sections import RunConfig
from pgprune_core.errors import DistributedError, Interrupted
from pgprune_core.model.masking import LossOracle
from pgprune_core.parallel import launched_by_torchrun
from pgprune_core.plugin.registry import Registry, get_registry
from pgprune_core.report.progress import Reporter, SilentReporter
from pgprune_core.run.artifacts import atomic_path, atomic_write_json
from pgprune_core.run.pipeline import (
    calibration_tokens,
    evaluate_dense,
    initial_scores,
    prepare,
    run_pipeline,
)
from pgprune_core.run.rundir import RunDir, config_digest


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dense_key(config: RunConfig) -> str:
    """The settings the dense model's metrics depend on: model, data, evaluation.  (Not the
    seed: it only seeds the efficiency evaluator's random prompts.)"""
    data = json.loads(config.model_dump_json())
    return _digest({k: data[k] for k in ("model", "data", "evaluation")})


def scores_key(config: RunConfig) -> str:
    """The settings ``pipeline.initial_scores`` reads: the model and its units, the
    calibration data and windows (seed, batch size), the initializer."""
    data = json.loads(config.model_dump_json())
    return _digest({
        "model": data["model"], "data": data["data"], "init": data["init"],
        "granularity": data["pruning"]["granularity"], "seed": data["training"]["seed"],
        "batch_size": data["training"]["batch_size"],
    })


@dataclass(frozen=True)
class SharedFiles:
    """Where the shared results of one cell live under ``OUT/shared``."""

    dense: Path | None
    scores: Path


def shared_files(cell: Cell, shared_dir: Path) -> SharedFiles:
    dense = shared_dir / f"dense-{dense_key(cell.config)}.json" if cell.config.evaluation.dense else None
    return SharedFiles(dense, shared_dir / f"init-scores-{scores_key(cell.config)}.pt")


def compute_shared(cells: Sequence[Cell], shared_dir: Path, registry: Registry,
                   reporter: Reporter) -> None:
    """Measure the dense model and score the units once per distinct setting, for the
    cells that still need them; results already in ``shared_dir`` are reused."""

    missing: dict[str, list[tuple[Cell, SharedFiles]]] = {}
    for cell in cells:
        files = shared_files(cell, shared_dir)
        if (files.dense is not None and not files.dense.exists()) or not files.scores.exists():
            missing.setdefault(dense_key(cell.config), []).append((cell, files))
    shared_dir.mkdir(parents=True, exist_ok=True)
    for group in missing.values():
        first = group[0][0].config
        torch.manual_seed(first.training.seed)
        prep = prepare(first, registry, reporter)
        dense_path = group[0][1].dense
        if dense_path is not None and not dense_path.exists():
            atomic_write_json(dense_path, evaluate_dense(first, prep, registry, reporter))
        tokens = calibration_tokens(first, prep.loaded.tokenizer, reporter)
        oracle = LossOracle(prep.loaded.model, prep.structure, prep.layout, prep.granularities,
                            max_rows=first.training.max_rows,
                            skip_pruned=first.training.skip_pruned)
        for cell, files in group:
            if files.scores.exists():
                continue
            torch.manual_seed(cell.config.training.seed)
            scores = initial_scores(cell.config, prep, tokens, oracle, registry, reporter)
            with atomic_path(files.scores) as tmp:
                torch.save(scores, tmp)


# -- running the cells ------------------------------------------------------------------


class CompareReporter(Protocol):
    """How ``run_compare`` tells the user what it is doing (the CLI draws Rich bars)."""

    def phase(self, text: str) -> None: ...

    def cells_start(self, total: int, done: int) -> None: ...

    def cell_start(self, cell: Cell, steps: int) -> None: ...

    def cell_progress(self, step: int) -> None: ...

    def cell_end(self, cell: Cell, status: str) -> None: ...

    def cells_end(self) -> None: ...


class SilentCompareReporter:
    def phase(self, text: str) -> None:
        pass

    def cells_start(self, total: int, done: int) -> None:
        pass

    def cell_start(self, cell: Cell, steps: int) -> None:
        pass

    def cell_progress(self, step: int) -> None:
        pass

    def cell_end(self, cell: Cell, status: str) -> None:
        pass

    def cells_end(self) -> None:
        pass


class _CellLoopReporter(SilentReporter):
    """Forwards an in-process cell's step counter to the compare reporter."""

    def __init__(self, reporter: CompareReporter) -> None:
        self.reporter = reporter

    def loop_update(self, step: int, stats: dict[str, Any]) -> None:
        self.reporter.cell_progress(step)


def seed_cell(cell: Cell, files: SharedFiles) -> None:
    """Create the cell's run directory if needed and give it the shared results, which the
    pipeline then reuses exactly as a resumed run reuses its own."""
    run = RunDir(cell.path)
    if not run.marker.exists():
        run.create(cell.config, overwrite=False)
    for source, target in ((files.dense, run.dense_metrics), (files.scores, run.scores)):
        if source is not None:
            run.adopt(source, target)


def _last_step(metrics_log: Path) -> int | None:
    """The step of the last complete record of a growing ``metrics.jsonl``."""
    try:
        with metrics_log.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


@contextmanager
def _child(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process writing to ``log``; on any exit from the block other than its end it
    is asked to stop (it checkpoints on SIGTERM) and awaited, never orphaned."""
    with log.open("ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def run_cell_isolated(cell: Cell, reporter: CompareReporter, poll_s: float = 0.5) -> None:
    """``pgprune resume CELL`` in a fresh process; output to ``CELL/compare.log``."""
    log = cell.path / "compare.log"
    command = [sys.executable, "-m", "pgprune_core", "resume", str(cell.path)]
    metrics_log = RunDir(cell.path).metrics_log
    with _child(command, log) as process:
        interrupted = False
        while True:
            try:
                code = process.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                step = _last_step(metrics_log)
                if step is not None:
                    reporter.cell_progress(step)
            except KeyboardInterrupt:
                # make sure the child got it too (a terminal sends it to both), then let it
                # checkpoint and stop
                interrupted = True
                process.send_signal(signal.SIGINT)
    if interrupted or code == Interrupted.exit_code:
        raise Interrupted(f"stopped during {cell.name}; run the same command again to continue")
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise CellFailedError(f"{cell.name} failed (exit {code}): {tail[0].strip()} (log: {log})")


def run_cell_inprocess(cell: Cell, reporter: CompareReporter, registry: Registry) -> None:

    run_pipeline(cell.config, _CellLoopReporter(reporter), resume=cell.path, registry=registry)


# -- the whole comparison ---------------------------------------------------------------


@dataclass
class CompareOutcome:
    out: Path
    axes: GridAxes
    cells: list[Cell]
    #: names of the cells this invocation ran (the others were already done)
    ran: list[str]
    #: files written: compare.md, compare.csv, loss_curves.png, sparsity.png
    outputs: dict[str, Path]
    #: the summary rows (see :mod:`pgprune_core.compare.report`)
    rows: list[Any]


def write_manifest(request: CompareRequest, axes: GridAxes, cells: Sequence[Cell]) -> None:
    """``compare.json``: the grid, the command and each cell's directory and digest."""
    atomic_write_json(request.out / "compare.json", {
        "format": FORMAT,
        "command": request.command,
        "equal_forwards": request.equal_forwards,
        "axes": {"estimators": list(axes.estimators), "seeds": list(axes.seeds),
                 "rates": list(axes.rates), "inits": list(axes.inits),
                 "budgets": list(axes.budgets)},
        "cells": [{"name": c.name, "estimator": c.estimator, "init": c.init, "budget": c.budget,
                   "rate": c.rate, "seed": c.seed, "steps": c.config.training.steps,
                   "digest": config_digest(c.config)} for c in cells],
    })


def run_compare(request: CompareRequest, reporter: CompareReporter | None = None,
                registry: Registry | None = None) -> CompareOutcome:
    """Run (or continue) every cell of the grid, then write the tables and figures."""
    if launched_by_torchrun():
        raise DistributedError(
            "pgprune compare runs its cells one after the other, each in a process of its own, "
            "and does not run under torchrun; launch each cell with torchrun ... pgprune run "
            "(pgprune compare --dry-run lists the cells)"
        )
    reporter = reporter or SilentCompareReporter()
    registry = registry or get_registry()
    axes, cells = build_cells(request, registry)
    status = {cell.name: cell_status(cell) for cell in cells}
    request.out.mkdir(parents=True, exist_ok=True)
    write_manifest(request, axes, cells)
    pending = [cell for cell in cells if status[cell.name] != "done"]
    if pending:
        reporter.phase("dense metrics and initial scores, once for all cells")
        compute_shared(pending, request.out / "shared", registry, _PhaseReporter(reporter))
    ran = []
    reporter.cells_start(len(cells), len(cells) - len(pending))
    try:
        for cell in pending:
            seed_cell(cell, shared_files(cell, request.out / "shared"))
            reporter.cell_start(cell, cell.config.training.steps or 0)
            started = time.perf_counter()
            if request.isolate:
                run_cell_isolated(cell, reporter)
            else:
                run_cell_inprocess(cell, reporter, registry)
            ran.append(cell.name)
            reporter.cell_end(cell, f"done in {time.perf_counter() - started:.0f}s")
    finally:
        reporter.cells_end()
    results = collect(cells)
    rows = summarise(results, axes)
    outputs = {
        "csv": write_csv(request.out / "compare.csv", rows, axes),
        "loss_curves": plot_loss_curves(results, axes, request.out / "loss_curves.png"),
        "sparsity": plot_sparsity_by_estimator(results, axes, request.out / "sparsity.png"),
    }
    outputs["markdown"] = write_markdown(request.out / "compare.md", rows, results, axes,
                                         request.command, request.equal_forwards)
    return CompareOutcome(request.out, axes, cells, ran, outputs, rows)


class _PhaseReporter(SilentReporter):
    """Passes phase lines of the shared computation on; progress bars stay quiet."""

    def __init__(self, reporter: CompareReporter) -> None:
        self.reporter = reporter

    def phase(self, text: str) -> None:
        self.reporter.phase(text)
