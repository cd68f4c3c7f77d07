"""The run's pictures: where pruning cut (paper Fig. 6) and how the optimisation went.

Both functions take plain data (lists, or the ``metrics.jsonl`` file), not a model, so that
a finished run directory can be re-plotted and tests need no model.  Figures are drawn with
matplotlib's non-interactive Agg backend and written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pgprune_core.run.artifacts import atomic_path

#: colours and legend names of the unit kinds the built-in granularities define
KIND_STYLE: dict[str, tuple[str, str]] = {
    "head": ("#1f77b4", "attention heads"),
    "channel": ("#ff7f0e", "MLP channels"),
    "expert": ("#2ca02c", "routed experts"),
}
LAYER_COLOUR = "#9e9e9e"


def _figure(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes, without pyplot: no global figure registry, no GUI backend."""
    from matplotlib.figure import Figure

    gridspec_kw = kwargs.pop("gridspec_kw", None)
    sharex = kwargs.pop("sharex", False)
    fig = Figure(**kwargs)
    return fig, fig.subplots(*args, sharex=sharex, gridspec_kw=gridspec_kw)


def _save(fig: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    return Path(path)


def pruned_fraction_by_layer(
    kinds: Sequence[str], layers: Sequence[int], keep: Sequence[bool | int | float],
    n_layers: int,
) -> dict[str, list[float]]:
    """Per kind, the fraction of its units pruned in each layer (NaN where a layer has no
    unit of that kind).  ``kinds``, ``layers`` and ``keep`` describe one unit each."""
    if not len(kinds) == len(layers) == len(keep):
        raise ValueError(f"kinds, layers and keep differ in length: {len(kinds)}, {len(layers)}, {len(keep)}")
    totals: dict[str, list[int]] = {}
    pruned: dict[str, list[int]] = {}
    for kind, layer, kept in zip(kinds, layers, keep, strict=True):
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"unit layer {layer} outside 0..{n_layers - 1}")
        totals.setdefault(kind, [0] * n_layers)[int(layer)] += 1
        pruned.setdefault(kind, [0] * n_layers)[int(layer)] += 0 if kept else 1
    return {
        kind: [p / t if t else math.nan for p, t in zip(pruned[kind], totals[kind], strict=True)]
        for kind in totals
    }


def plot_sparsity(
    *,
    kinds: Sequence[str],
    layers: Sequence[int],
    keep: Sequence[bool | int | float],
    n_layers: int,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """``sparsity.png``: per layer, the pruned fraction of heads and of channels (grouped
    bars, dashed line = that kind's overall fraction); layers removed whole are shaded."""
    fractions = pruned_fraction_by_layer(kinds, layers, keep, n_layers)
    removed_layers = [i for i, f in enumerate(fractions.pop("layer", [])) if f == 1.0]
    bar_kinds = list(fractions)
    from matplotlib.patches import Patch

    fig, ax = _figure(figsize=(min(14.0, max(6.0, 0.4 * n_layers + 2.5)), 3.8))
    handles: list[Any] = []
    for layer in removed_layers:
        ax.axvspan(layer - 0.5, layer + 0.5, color=LAYER_COLOUR, alpha=0.35, lw=0)
    width = 0.8 / max(1, len(bar_kinds))
    for i, kind in enumerate(bar_kinds):
        colour, label = KIND_STYLE.get(kind, (f"C{i + 2}", kind))
        xs = [layer - 0.4 + width * (i + 0.5) for layer in range(n_layers)]
        values = fractions[kind]
        unit_keep = [k for k, kd in zip(keep, kinds, strict=True) if kd == kind]
        overall = 1.0 - sum(bool(k) for k in unit_keep) / len(unit_keep)
        handles.append(ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width=width,
                              color=colour, label=f"{label} ({overall:.0%} overall, dashed)"))
        ax.axhline(overall, color=colour, ls="--", lw=1)
    if removed_layers:
        handles.append(Patch(color=LAYER_COLOUR, alpha=0.35,
                             label=f"layer removed ({len(removed_layers)} of {n_layers})"))
    ax.set_xlim(-0.6, n_layers - 0.4)
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(range(n_layers))
    if n_layers > 40:
        ax.set_xticks(range(0, n_layers, 4))
    ax.set_xlabel("layer")
    ax.set_ylabel("pruned fraction")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              ncol=len(handles), fontsize="small", frameon=False)
    fig.suptitle(title or "pruned fraction per layer", y=1.02)
    return _save(fig, path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (a killed writer) is ignored."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in records
             if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_loss(metrics_log: str | Path, path: str | Path, title: str | None = None,
              loss_label: str = "loss of sampled masks") -> Path:
    """``loss.png`` from ``metrics.jsonl``: the sampled masks' loss and the moving-average
    baseline (top), the expected fraction of units kept and the learning rate (bottom).
    Stage changes (Random-Progressive rates) are marked with dotted lines."""
    records = read_jsonl(metrics_log)
    if not records:
        raise ValueError(f"{metrics_log} holds no records to plot")
    fig, (top, bottom) = _figure(2, 1, figsize=(7.5, 5.2), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})
    steps, loss = _series(records, "loss")
    top.plot(steps, loss, color="#1f77b4", lw=1, alpha=0.8, label=loss_label)
    b_steps, baseline = _series(records, "baseline")
    if baseline:
        top.plot(b_steps, baseline, color="#d62728", lw=1.5, label="baseline")
    skipped = [r["step"] for r in records if r.get("skipped")]
    if skipped:
        top.plot(skipped, [min(loss or [0.0])] * len(skipped), "x", color="k",
                 label=f"skipped steps ({len(skipped)})")
    top.set_ylabel("loss (nats/token)")
    top.grid(alpha=0.3)
    top.legend(fontsize="small", frameon=False, loc="best")
    k_steps, kept = _series(records, "expected_kept")
    bottom.plot(k_steps, kept, color="#2ca02c", lw=1.5, label="expected kept (mean s)")
    bottom.set_ylabel("mean keep-probability")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    handles, labels = bottom.get_legend_handles_labels()
    lr_steps, lr = _series(records, "lr")
    if lr:
        right = bottom.twinx()
        right.plot(lr_steps, lr, color="#9467bd", lw=1, ls="--", label="learning rate")
        right.set_ylabel("learning rate")
        right.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    bottom.legend(handles, labels, fontsize="small", frameon=False, loc="best")
    starts = [r for i, r in enumerate(records)
              if i == 0 or r.get("stage") != records[i - 1].get("stage")]
    for i, record in enumerate(starts if len(starts) > 1 else []):
        if i:
            for ax in (top, bottom):
                ax.axvline(record["step"], color="k", ls=":", lw=0.8)
        if record.get("rate") is not None:
            top.annotate(f" rate {record['rate']:.0%}", (record["step"], 0.98),
                         xycoords=("data", "axes fraction"), fontsize="x-small",
                         ha="left", va="top")
    top.set_title(title or "optimisation")
    return _save(fig, path)
