"""The figures of ``pgprune compare``: loss curves and per-layer sparsity, per estimator.

Both read :class:`~pgprune_core.compare.report.CellResult` s (already loaded from the run
directories) and draw one row of panels per (init, budget, rate) group, averaging over
seeds, with matplotlib's Agg backend (no pyplot, no GUI), written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pgprune_core.compare.grid import GridAxes
from pgprune_core.compare.report import CellResult
from pgprune_core.report.plots import KIND_STYLE, pruned_fraction_by_layer
from pgprune_core.run.artifacts import atomic_path

#: records averaged by the rolling mean of the loss curves (the per-step losses of two
#: sampled masks are noisy; the trend is what compares estimators)
SMOOTHING = 5


def _groups(axes: GridAxes) -> list[tuple[str, str, float]]:
    return [(i, b, r) for i in axes.inits for b in axes.budgets for r in axes.rates]


def _label(group: tuple[str, str, float], axes: GridAxes) -> str:
    init, budget, rate = group
    parts = [f"{rate:.0%}"]
    if len(axes.inits) > 1:
        parts.append(init)
    if len(axes.budgets) > 1:
        parts.append(budget)
    return ", ".join(parts)


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def mean_curve(results: Sequence[CellResult], x_key: str) -> tuple[list[float], list[float]]:
    """The loss averaged over seeds at each logged step (steps every seed logged), with its
    x coordinate (``step`` or ``forward_passes``) averaged too."""
    per_seed = []
    for result in results:
        per_seed.append({r["step"]: (float(r[x_key]), float(r["loss"])) for r in result.records
                         if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])})
    if not per_seed:
        return [], []
    common = sorted(set.intersection(*(set(d) for d in per_seed)))
    xs = [sum(d[s][0] for d in per_seed) / len(per_seed) for s in common]
    ys = [sum(d[s][1] for d in per_seed) / len(per_seed) for s in common]
    return xs, ys


def plot_loss_curves(results: Sequence[CellResult], axes: GridAxes, path: Path) -> Path:
    """``loss_curves.png``: per group, the mean loss of the step's masks against the step
    (left) and against forward passes (right: the budget an equal-forwards comparison fixes)."""
    groups = _groups(axes)
    fig, panels = _figure(len(groups), 2, 11.0, 3.4 * len(groups))
    for row, group in enumerate(groups):
        for col, (x_key, x_label) in enumerate((("step", "step"),
                                                ("forward_passes", "forward passes"))):
            ax = panels[row][col]
            for i, estimator in enumerate(axes.estimators):
                mine = [r for r in results if r.cell.group == group and r.cell.estimator == estimator]
                xs, ys = mean_curve(mine, x_key)
                if xs:
                    ax.plot(xs, _smooth(ys, SMOOTHING), color=f"C{i}", lw=1.4,
                            marker="o" if len(xs) < 10 else None, markersize=4,
                            label=f"{estimator} ({len(mine)} seed{'s' if len(mine) > 1 else ''})")
            ax.set_xlabel(x_label)
            ax.set_ylabel("loss (nats/token)")
            ax.set_title(f"{_label(group, axes)}: loss vs {x_label}", fontsize="medium")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", frameon=False)
    fig.suptitle(f"loss of the sampled masks, mean over seeds, rolling mean of {SMOOTHING} "
                 f"logged steps", y=1.0, fontsize="medium")
    return _save(fig, path)


def mean_sparsity(results: Sequence[CellResult], n_layers: int) -> dict[str, list[float]]:
    """Per kind, the pruned fraction per layer averaged over the given cells (seeds)."""
    totals: dict[str, list[float]] = {}
    for result in results:
        kinds, layers, keep = [], [], []
        for kind, part in result.kinds.items():
            kinds += [kind] * len(part["keep"])
            layers += part["layer"]
            keep += part["keep"]
        for kind, values in pruned_fraction_by_layer(kinds, layers, keep, n_layers).items():
            acc = totals.setdefault(kind, [0.0] * n_layers)
            totals[kind] = [a + (0.0 if math.isnan(v) else v) / len(results)
                            for a, v in zip(acc, values, strict=True)]
    return totals


def plot_sparsity_by_estimator(results: Sequence[CellResult], axes: GridAxes, path: Path) -> Path:
    """``sparsity.png``: per group and kind, the pruned fraction of each layer, one bar per
    estimator side by side (mean over seeds)."""
    groups = _groups(axes)
    kinds: list[str] = []
    for result in results:
        kinds += [k for k in result.kinds if k not in kinds]
    n_layers = max((max(p["layer"]) + 1 for r in results for p in r.kinds.values() if p["layer"]),
                   default=1)
    panel_width = min(12.0, max(5.0, 0.25 * n_layers * len(axes.estimators) + 2.0))
    fig, panels = _figure(len(groups), max(1, len(kinds)), panel_width * max(1, len(kinds)),
                          3.4 * len(groups))
    width = 0.8 / max(1, len(axes.estimators))
    for row, group in enumerate(groups):
        for col, kind in enumerate(kinds):
            ax = panels[row][col]
            for i, estimator in enumerate(axes.estimators):
                mine = [r for r in results if r.cell.group == group and r.cell.estimator == estimator]
                if not mine:
                    continue
                values = mean_sparsity(mine, n_layers).get(kind, [])
                xs = [layer - 0.4 + width * (i + 0.5) for layer in range(len(values))]
                ax.bar(xs, values, width=width, color=f"C{i}", label=estimator)
            ax.set_xticks(range(n_layers))
            ax.set_ylim(0.0, 1.0)
            ax.set_xlabel("layer")
            ax.set_ylabel("pruned fraction")
            ax.axhline(group[2], color="k", ls=":", lw=0.8)
            ax.set_title(f"{_label(group, axes)}: {KIND_STYLE.get(kind, ('', kind))[1]}",
                         fontsize="medium")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize="small", frameon=False, ncol=len(axes.estimators))
    fig.suptitle("pruned fraction per layer, mean over seeds (dotted: the target rate)",
                 y=1.0, fontsize="medium")
    return _save(fig, path)
