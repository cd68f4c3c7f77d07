"""The tables of ``pgprune compare``: per estimator and setting, means and spreads over seeds.

Everything is read back from the cells' run directories (``metrics.json``, ``masks.json``,
``metrics.jsonl``, ``init_scores.pt``), so the tables of a finished comparison can be
rebuilt without running anything.  A row is one estimator in one group (init, budget,
rate); its numbers are means over the seeds of that group (perplexity also with the sample
standard deviation).  Mask distances compare the final masks of two estimators *for the
same seed*, then average over seeds, so they measure where the estimators disagree, not
seed noise.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pgprune_core.compare.grid import Cell, GridAxes
from pgprune_core.config.sections import RunConfig
from pgprune_core.model.structure import UnitLayout, UnitSet
from pgprune_core.optim.budget import protected_mask
from pgprune_core.optim.step_size import StepSizeConfig, effective_lr
from pgprune_core.report.markdown import markdown_table
from pgprune_core.report.plots import read_jsonl
from pgprune_core.run.artifacts import atomic_write_text
from pgprune_core.run.pipeline import make_budget
from pgprune_core.run.rundir import RunDir


@dataclass
class CellResult:
    """What one finished cell measured and decided."""

    cell: Cell
    metrics: dict[str, Any]
    #: the kinds of ``masks.json``, in layout order
    kinds: dict[str, dict[str, list[Any]]]
    #: bool [n]: the final keep mask, kinds concatenated in layout order
    keep: torch.Tensor
    #: bool [n]: the mask the initializer's scores alone give under the same budget
    init_keep: torch.Tensor | None
    #: ``metrics.jsonl`` records (loss, lr, forward passes per logged step)
    records: list[dict[str, Any]] = field(default_factory=list)


def masks_layout(kinds: dict[str, dict[str, list[Any]]]) -> UnitLayout:
    """The unit layout a ``masks.json`` describes (no model needed)."""
    return UnitLayout([
        UnitSet(kind, torch.tensor(part["layer"], dtype=torch.int64),
                torch.tensor(part["index"], dtype=torch.int64),
                torch.tensor(part["cost"], dtype=torch.int64))
        for kind, part in kinds.items()
    ])


def initializer_mask(cell: Cell, kinds: dict[str, dict[str, list[Any]]], n_layers: int,
                     scores: torch.Tensor) -> torch.Tensor:
    """The final mask the initial scores give (what ``--estimator none`` would cut)."""
    layout = masks_layout(kinds)
    first, last = cell.config.pruning.protect_layers
    protected = protected_mask(layout, n_layers, first, last)
    return make_budget(cell.config, layout, cell.rate, protected).final_mask(scores)


def start_lr(config: RunConfig) -> float | None:
    """The learning rate an estimator with the shared step-size options applies at the
    first step of a fixed-rate run (after the step-count scaling): the number a benchmark
    must state."""
    if not isinstance(config.estimator, StepSizeConfig) or config.training.schedule != "fixed":
        return None
    steps = config.training.steps
    if steps is None:
        return None
    return effective_lr(config.estimator, 0, steps, steps)


def collect(cells: Sequence[Cell]) -> list[CellResult]:
    """Read every finished cell (cells without ``metrics.json`` are left out)."""
    results = []
    for cell in cells:
        run = RunDir(cell.path)
        if not run.metrics.exists():
            continue
        metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
        doc = json.loads(run.masks.read_text(encoding="utf-8"))
        kinds = doc["kinds"]
        keep = torch.tensor([bool(v) for part in kinds.values() for v in part["keep"]])
        init_keep = None
        if run.scores.exists():
            scores = torch.load(run.scores, weights_only=True)
            init_keep = initializer_mask(cell, kinds, int(doc["n_layers"]), scores)
        records = read_jsonl(run.metrics_log) if run.metrics_log.exists() else []
        results.append(CellResult(cell, metrics, kinds, keep, init_keep, records))
    return results


# -- summarising over seeds -------------------------------------------------------------


@dataclass
class SummaryRow:
    """One estimator in one (init, budget, rate) group, over its seeds."""

    estimator: str
    init: str
    budget: str
    rate: float
    seeds: int
    steps: float
    forward_passes: float
    backward_passes: float
    #: eval set -> (mean, sample std or None with one seed)
    ppl: dict[str, tuple[float, float | None]]
    dense_ppl: dict[str, float]
    wall_s: float
    optimize_s: float
    step_s: float
    peak_memory_bytes: float
    #: peak minus what was held when the measured block began (None: not recorded)
    peak_increase_bytes: float | None
    #: learning rate of the first step (None: not an SGD-step estimator, or staged)
    lr_start: float | None
    #: mean fraction of units whose keep flag differs from the initializer's mask
    changed_vs_init: float | None
    #: other estimator -> mean fraction of units where the final masks differ (same seed)
    hamming: dict[str, float]


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else math.nan


def _std(values: Sequence[float]) -> float | None:
    return float(statistics.stdev(values)) if len(values) >= 2 else None


def hamming(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of units whose keep flags differ."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different lengths: {a.numel()} and {b.numel()}")
    return float((a != b).double().mean())


def pairwise_hamming(results: Sequence[CellResult], group: tuple[str, str, float],
                     first: str, second: str) -> list[float]:
    """Per seed present for both estimators in ``group``, the distance of their masks."""
    by_seed: dict[str, dict[int, torch.Tensor]] = {first: {}, second: {}}
    for result in results:
        if result.cell.group == group and result.cell.estimator in by_seed:
            by_seed[result.cell.estimator][result.cell.seed] = result.keep
    seeds = sorted(set(by_seed[first]) & set(by_seed[second]))
    return [hamming(by_seed[first][s], by_seed[second][s]) for s in seeds]


def summarise(results: Sequence[CellResult], axes: GridAxes) -> list[SummaryRow]:
    """One row per estimator and group, in grid order; groups without results are left out."""
    rows = []
    for init in axes.inits:
        for budget in axes.budgets:
            for rate in axes.rates:
                group = (init, budget, rate)
                for estimator in axes.estimators:
                    mine = [r for r in results
                            if r.cell.group == group and r.cell.estimator == estimator]
                    if mine:
                        rows.append(_row(estimator, group, mine, results, axes))
    return rows


def _row(estimator: str, group: tuple[str, str, float], mine: Sequence[CellResult],
         results: Sequence[CellResult], axes: GridAxes) -> SummaryRow:
    runs = [r.metrics["run"] for r in mine]
    eval_sets: list[str] = []
    for r in mine:
        eval_sets += [k for k in (r.metrics["pruned"].get("ppl") or {}) if k not in eval_sets]
    ppl = {}
    for name in eval_sets:
        values = [float(r.metrics["pruned"]["ppl"][name]) for r in mine
                  if name in (r.metrics["pruned"].get("ppl") or {})]
        ppl[name] = (_mean(values), _std(values))
    dense_ppl = {}
    for name in eval_sets:
        values = [float(r.metrics["dense"]["ppl"][name]) for r in mine
                  if name in (r.metrics["dense"].get("ppl") or {})]
        if values:
            dense_ppl[name] = _mean(values)
    increases = [run["peak_memory_bytes"] - run["peak_memory_start_bytes"] for run in runs
                 if "peak_memory_start_bytes" in run]
    lrs = [lr for lr in (start_lr(r.cell.config) for r in mine) if lr is not None]
    changed = [hamming(r.keep, r.init_keep) for r in mine if r.init_keep is not None]
    others = {other: _mean(pairwise_hamming(results, group, estimator, other))
              for other in axes.estimators if other != estimator}
    return SummaryRow(
        estimator=estimator, init=group[0], budget=group[1], rate=group[2], seeds=len(mine),
        steps=_mean([run["steps"] for run in runs]),
        forward_passes=_mean([run["forward_passes"] for run in runs]),
        backward_passes=_mean([run["backward_passes"] for run in runs]),
        ppl=ppl, dense_ppl=dense_ppl,
        wall_s=_mean([run["wall_s"] for run in runs]),
        optimize_s=_mean([run["optimize_s"] for run in runs]),
        step_s=_mean([run["optimize_s"] / run["steps"] for run in runs if run["steps"]]),
        peak_memory_bytes=_mean([run["peak_memory_bytes"] for run in runs]),
        peak_increase_bytes=_mean(increases) if len(increases) == len(runs) else None,
        lr_start=_mean(lrs) if lrs else None,
        changed_vs_init=_mean(changed) if changed else None,
        hamming={k: v for k, v in others.items() if not math.isnan(v)},
    )


# -- writing ----------------------------------------------------------------------------


def _axes_columns(axes: GridAxes) -> list[str]:
    """The grouping columns worth showing: init and budget only when they vary."""
    columns = []
    if len(axes.inits) > 1:
        columns.append("init")
    if len(axes.budgets) > 1:
        columns.append("budget")
    return [*columns, "rate"]


def _eval_sets(rows: Sequence[SummaryRow]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row.ppl if k not in names]
    return names


def write_csv(path: Path, rows: Sequence[SummaryRow], axes: GridAxes) -> Path:
    """``compare.csv``: one line per row, plain numbers (seconds, bytes, fractions)."""
    sets = _eval_sets(rows)
    header = (["estimator", "init", "budget", "rate", "seeds", "steps", "forward_passes",
               "backward_passes"]
              + [f"ppl_{s}_{stat}" for s in sets for stat in ("mean", "std")]
              + [f"dense_ppl_{s}" for s in sets]
              + ["wall_s", "optimize_s", "step_s", "peak_memory_bytes", "peak_increase_bytes",
                 "lr_start", "changed_vs_init"]
              + [f"hamming_vs_{e}" for e in axes.estimators])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)

    def num(value: float | None) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"

    for row in rows:
        writer.writerow(
            [row.estimator, row.init, row.budget, f"{row.rate:g}", row.seeds, num(row.steps),
             num(row.forward_passes), num(row.backward_passes)]
            + [num(v) for s in sets for v in (row.ppl.get(s) or (None, None))]
            + [num(row.dense_ppl.get(s)) for s in sets]
            + [num(v) for v in (row.wall_s, row.optimize_s, row.step_s, row.peak_memory_bytes,
                                row.peak_increase_bytes, row.lr_start, row.changed_vs_init)]
            + [num(row.hamming.get(e)) for e in axes.estimators]
        )
    atomic_write_text(path, buffer.getvalue())
    return path


def _ppl_cell(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return "–"
    mean, std = value
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def _group_cells(row: SummaryRow, columns: Sequence[str]) -> list[str]:
    values = {"init": row.init, "budget": row.budget, "rate": f"{row.rate:.0%}"}
    return [values[c] for c in columns]


#: columns of the full table that the terminal's compact table leaves out
_VERBOSE_COLUMNS = frozenset({"steps", "optimise s", "wall s", "lr at start"})


def result_table(rows: Sequence[SummaryRow], axes: GridAxes,
                 compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the main table (markdown; ``compact`` for a terminal)."""
    columns = _axes_columns(axes)
    sets = _eval_sets(rows)
    dense = {s: next((r.dense_ppl[s] for r in rows if s in r.dense_ppl), None) for s in sets}
    header = (["estimator", *columns, "seeds"]
              + [f"ppl {s}" + (f" (dense {dense[s]:.2f})" if dense[s] else "") for s in sets]
              + ["steps", "forward", "backward", "step s", "optimise s", "wall s",
                 "peak MiB", "+peak MiB", "lr at start", "changed vs init"])
    body = []
    for row in rows:
        body.append(
            [row.estimator, *_group_cells(row, columns), str(row.seeds)]
            + [_ppl_cell(row.ppl.get(s)) for s in sets]
            + [f"{row.steps:,.0f}", f"{row.forward_passes:,.0f}", f"{row.backward_passes:,.0f}",
               f"{row.step_s:.3f}", f"{row.optimize_s:,.1f}", f"{row.wall_s:,.1f}",
               _mib(row.peak_memory_bytes), _mib(row.peak_increase_bytes),
               "–" if row.lr_start is None else f"{row.lr_start:.3g}",
               "–" if row.changed_vs_init is None else f"{row.changed_vs_init:.1%}"]
        )
    if compact:
        keep = [i for i, name in enumerate(header) if name not in _VERBOSE_COLUMNS]
        header = [header[i] for i in keep]
        body = [[line[i] for i in keep] for line in body]
    return header, body


def hamming_table(rows: Sequence[SummaryRow], axes: GridAxes) -> tuple[list[str], list[list[str]]]:
    """Per group and estimator pair (each pair once): the mean mask distance over seeds."""
    columns = _axes_columns(axes)
    header = [*columns, "estimators", "masks differ (fraction of units)"]
    body = []
    for row in rows:
        for other in axes.estimators:
            if other in row.hamming and axes.estimators.index(other) > axes.estimators.index(row.estimator):
                body.append([*_group_cells(row, columns), f"{row.estimator} vs {other}",
                             f"{row.hamming[other]:.1%}"])
    return header, body


def _ratio_lines(rows: Sequence[SummaryRow]) -> list[str]:
    """Cost ratios of every estimator to the first listed one, per group."""
    lines = []
    groups: dict[tuple[str, str, float], list[SummaryRow]] = {}
    for row in rows:
        groups.setdefault((row.init, row.budget, row.rate), []).append(row)
    for (init, budget, rate), members in groups.items():
        reference = members[0]
        for row in members[1:]:
            parts = [f"step time {reference.step_s / row.step_s:.2f}x" if row.step_s else "",
                     f"peak memory {reference.peak_memory_bytes / row.peak_memory_bytes:.2f}x"]
            if reference.peak_increase_bytes and row.peak_increase_bytes:
                parts.append(f"memory added by the optimisation "
                             f"{reference.peak_increase_bytes / row.peak_increase_bytes:.2f}x")
            lines.append(f"- {init}, {budget}, {rate:.0%}: {reference.estimator} / {row.estimator}: "
                         + ", ".join(p for p in parts if p))
    return lines


def _settings_lines(results: Sequence[CellResult], axes: GridAxes) -> list[str]:
    lines = []
    for estimator in axes.estimators:
        first = next((r for r in results if r.cell.estimator == estimator), None)
        if first is None:
            continue
        options = first.cell.config.estimator.model_dump()
        options.pop("name", None)
        text = ", ".join(f"{k}={v}" for k, v in options.items())
        lines.append(f"- `{estimator}`: {text}; {first.cell.config.training.steps} steps")
    return lines


def write_markdown(path: Path, rows: Sequence[SummaryRow], results: Sequence[CellResult],
                   axes: GridAxes, command: str, equal_forwards: bool) -> Path:
    """``compare.md``: the command, the results table, mask distances, settings, figures."""
    header, body = result_table(rows, axes)
    h_header, h_body = hamming_table(rows, axes)
    method = next((r.metrics["run"].get("peak_memory_method") for r in results), "")
    parts = [
        "# pgprune compare",
        "",
        "```",
        command or "pgprune compare",
        "```",
        "",
        f"Estimators {', '.join(axes.estimators)}; seeds {', '.join(map(str, axes.seeds))}; "
        f"rates {', '.join(f'{r:.0%}' for r in axes.rates)}; init {', '.join(axes.inits)}; "
        f"budget {', '.join(axes.budgets)}."
        + (" Every estimator got the same number of forward passes (`--equal-forwards`)."
           if equal_forwards else ""),
        "",
        "## Results",
        "",
        "Means over seeds (perplexity: mean ± sample standard deviation). *step s*: "
        "optimisation time per step; *peak MiB*: the run's peak memory while optimising "
        f"({method}); *+peak MiB*: that peak minus what was held when optimisation began "
        "(model, data), i.e. what the estimator itself added; *changed vs init*: share of "
        "units whose keep flag differs from the initializer's own mask.",
        "",
        markdown_table(header, body),
        "",
    ]
    ratios = _ratio_lines(rows)
    if ratios:
        parts += ["Cost ratios (first estimator / the others; below 1 = the first is cheaper):",
                  "", *ratios, ""]
    if h_body:
        parts += ["## Where the final masks differ", "",
                  "Hamming distance between the final masks of two estimators for the same "
                  "seed, as a fraction of all units, averaged over seeds.", "",
                  markdown_table(h_header, h_body), ""]
    parts += ["## Settings", "", *_settings_lines(results, axes), "",
              "## Figures", "", "![loss curves](loss_curves.png)", "",
              "![per-layer sparsity](sparsity.png)", ""]
    atomic_write_text(path, "\n".join(parts))
    return path
