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
import itertools
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .artifacts import atomic_path, atomic_write_json
from .config import RunConfig, resolve_config
from .errors import ConfigError, Interrupted, PgpruneError
from .registry import Registry, get_registry
from .reporting import Reporter, SilentReporter
from .rundir import RunDir, config_digest

FORMAT = "pgprune-compare/1"


class CellFailedError(PgpruneError):
    """A cell's run ended with an error (its log says why)."""


# -- the grid -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GridAxes:
    """The values each axis of the grid takes (one value = not an axis of the tables)."""

    estimators: tuple[str, ...]
    seeds: tuple[int, ...]
    rates: tuple[float, ...]
    inits: tuple[str, ...]
    budgets: tuple[str, ...]


@dataclass(frozen=True)
class CompareRequest:
    """Everything ``pgprune compare`` was asked to do."""

    out: Path
    #: estimators to compare; the other axes default to the base configuration's value
    estimators: tuple[str, ...]
    seeds: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    inits: tuple[str, ...] = ()
    budgets: tuple[str, ...] = ()
    config_file: Path | None = None
    #: run flags as dotted keys (``{"model.name_or_path": ...}``)
    flags: Mapping[str, Any] = field(default_factory=dict)
    #: dotted overrides for every cell; ``estimator.<name>.<key>`` ones go to that
    #: estimator's cells only (see :func:`split_estimator_overrides`)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    equal_forwards: bool = False
    isolate: bool = True
    #: the command line, recorded in compare.json and compare.md
    command: str = ""


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    estimator: str
    init: str
    budget: str
    rate: float
    seed: int
    config: RunConfig
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> tuple[str, str, float]:
        """What the tables average over seeds within: (init, budget, rate)."""
        return (self.init, self.budget, self.rate)


def parse_list(text: str | None, convert: Callable[[str], Any], what: str) -> tuple[Any, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; ``None`` or empty -> ``()``; duplicates refused."""
    if not text:
        return ()
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(convert(part))
        except ValueError:
            raise ConfigError(f"{what}: cannot read {part!r} in {text!r}") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{what}: a value is listed twice in {text!r}")
    return tuple(values)


#: configuration keys each cell's position in the grid sets -> the option that sets them
GRID_KEYS = {"estimator.name": "--estimator", "init.name": "--init", "pruning.budget": "--budget",
             "pruning.prune_rate": "--rates", "training.seed": "--seeds", "output.dir": "--out"}


def split_estimator_overrides(
    overrides: Mapping[str, Any], estimators: Sequence[str], registry: Registry
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Separate ``--estimator.<name>.<key> V`` (for that estimator's cells only, as
    ``estimator.<key>``) from the overrides every cell gets.  A plain ``--estimator.<key>``
    goes to every compared estimator that has the option (``none`` has no ``lr``), and is
    refused when none has it.  Naming an estimator that is not in the grid is a mistake,
    not something to ignore silently."""
    known = set(registry.names("estimator"))
    common: dict[str, Any] = {}
    specific: dict[str, dict[str, Any]] = {name: {} for name in estimators}
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "estimator" and len(parts) >= 2 and parts[1] not in known | {"name"}:
            takers = [name for name in estimators
                      if parts[1] in registry.cls("estimator", name).Config.model_fields]
            if not takers:
                raise ConfigError(f"--{key}: no compared estimator has an option "
                                  f"'{parts[1]}' ({', '.join(estimators)})")
            for name in takers:
                specific[name][key] = value
        elif parts[0] == "estimator" and len(parts) >= 3 and parts[1] in known:
            if parts[1] not in specific:
                raise ConfigError(
                    f"--{key} sets an option of '{parts[1]}', which is not compared here "
                    f"(--estimator {' --estimator '.join(estimators)})"
                )
            specific[parts[1]][".".join(["estimator", *parts[2:]])] = value
        elif key in GRID_KEYS:
            raise ConfigError(f"--{key} is set by the grid; use {GRID_KEYS[key]} instead")
        else:
            common[key] = value
    return common, specific


def forwards_per_step(config: RunConfig) -> int:
    """Forward passes of the batch per optimisation step: the estimator's ``n_samples``
    (masks evaluated per step), the convention every bundled estimator follows."""
    value = getattr(config.estimator, "n_samples", None)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"--equal-forwards needs each estimator's masks per step; estimator "
            f"'{config.estimator.name}' has no 'n_samples' option"
        )
    return value


def cell_name(estimator: str, init: str, budget: str, rate: float, seed: int) -> str:
    return f"{estimator}-{init}-{budget}-rate{rate:g}-seed{seed}"


def build_cells(request: CompareRequest, registry: Registry | None = None) -> tuple[GridAxes, list[Cell]]:
    """Resolve the configuration of every cell (validated like ``pgprune run``'s)."""
    registry = registry or get_registry()
    if not request.estimators:
        raise ConfigError("name at least one estimator: --estimator reinforce --estimator gumbel ...")
    if len(set(request.estimators)) != len(request.estimators):
        raise ConfigError(f"an estimator is listed twice: {', '.join(request.estimators)}")
    for name in request.estimators:
        registry.get("estimator", name)
    common, specific = split_estimator_overrides(request.overrides, request.estimators, registry)
    base = resolve_config(request.config_file, request.flags, common, registry)
    axes = GridAxes(
        estimators=tuple(request.estimators),
        seeds=request.seeds or (base.training.seed,),
        rates=request.rates or (base.pruning.prune_rate,),
        inits=request.inits or (base.init.name,),
        budgets=request.budgets or (base.pruning.budget,),
    )
    runs = request.out / "runs"

    def resolve(estimator: str, init: str, budget: str, rate: float, seed: int,
                extra: Mapping[str, Any]) -> RunConfig:
        flags = {**request.flags, "estimator.name": estimator, "init.name": init,
                 "pruning.budget": budget, "pruning.prune_rate": rate, "training.seed": seed,
                 "output.dir": str(runs / cell_name(estimator, init, budget, rate, seed))}
        return resolve_config(request.config_file, flags, {**common, **specific[estimator], **extra},
                              registry)

    budget_forwards: int | None = None
    if request.equal_forwards:
        if base.training.steps is None:
            raise ConfigError("--equal-forwards needs --steps: the forward budget is --steps x "
                              "the first estimator's masks per step")
        first = resolve(axes.estimators[0], axes.inits[0], axes.budgets[0], axes.rates[0],
                        axes.seeds[0], {})
        budget_forwards = base.training.steps * forwards_per_step(first)
    cells = []
    for estimator, init, budget, rate, seed in itertools.product(
            axes.estimators, axes.inits, axes.budgets, axes.rates, axes.seeds):
        config = resolve(estimator, init, budget, rate, seed, {})
        if budget_forwards is not None and registry.cls("estimator", estimator).optimises:
            steps = max(1, round(budget_forwards / forwards_per_step(config)))
            config = resolve(estimator, init, budget, rate, seed, {"training.steps": steps})
        path = runs / cell_name(estimator, init, budget, rate, seed)
        cells.append(Cell(estimator, init, budget, rate, seed, config, path))
    return axes, cells


# -- what the cells share ---------------------------------------------------------------


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
    from .masking import LossOracle
    from .pipeline import calibration_tokens, evaluate_dense, initial_scores, prepare

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
                            max_rows=first.training.max_rows)
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


def cell_status(cell: Cell) -> str:
    """``done``, ``partial`` (a run directory that has not finished) or ``new``.  A cell
    directory that holds another configuration's run is refused."""
    run = RunDir(cell.path)
    if not run.marker.exists():
        if cell.path.exists() and any(cell.path.iterdir()):
            raise ConfigError(f"{cell.path} exists and is not a pgprune run; choose another --out")
        return "new"
    marker = run.read_marker()
    if marker.get("digest") != config_digest(cell.config):
        raise ConfigError(
            f"{cell.path} holds a run with other settings than this comparison asks for; "
            f"use another --out (or delete that directory to run it again)"
        )
    return "done" if marker.get("status") == "done" and run.metrics.exists() else "partial"


def seed_cell(cell: Cell, files: SharedFiles) -> None:
    """Create the cell's run directory if needed and give it the shared results, which the
    pipeline then reuses exactly as a resumed run reuses its own."""
    run = RunDir(cell.path)
    if not run.marker.exists():
        run.create(cell.config, overwrite=False)
    for source, target in ((files.dense, run.dense_metrics), (files.scores, run.scores)):
        if source is not None and not target.exists():
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)


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
    from .pipeline import run_pipeline

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
    #: the summary rows (see :mod:`pgprune_core.compare_report`)
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
    from .compare_plots import plot_loss_curves, plot_sparsity_by_estimator
    from .compare_report import collect, summarise, write_csv, write_markdown

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
