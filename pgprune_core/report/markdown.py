"""``report.md``: the dense-vs-pruned table a reader wants first, then how the run pruned.

The rows are built from ``metrics.json`` alone (its schema: ``docs/metrics.md``), so a report
can be regenerated from a finished run directory.  :func:`comparison_rows` is shared with
``pgprune eval``'s terminal table, which shows one model's side.  Quantities a third-party
evaluator adds (top-level numbers, or one level of named numbers) get rows too, labelled
by their keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pgprune_core.evaluation.efficiency import peak_memory_comparable

Side = Mapping[str, Any]

#: keys whose rows are built explicitly below, or that are settings rather than results
HANDLED_KEYS = frozenset({
    "params", "params_non_embedding", "model_bytes", "disk_bytes", "forward", "generation",
    "vs_dense", "ppl", "ppl_tokens", "ppl_seq_len", "zero_shot", "zero_shot_average",
    "zero_shot_settings",
})


@dataclass(frozen=True)
class Row:
    """One metric across the sides (dense, pruned) and pruned/dense when both exist."""

    label: str
    values: list[str]
    ratio: str


def _get(side: Side, path: Sequence[str]) -> Any:
    node: Any = side
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt_int(value: float) -> str:
    return f"{int(value):,}"


def fmt_float(value: float) -> str:
    return f"{value:,.2f}"


def fmt_pct(value: float) -> str:
    return f"{100 * value:.2f}"


def fmt_ms(value: float) -> str:
    return f"{1000 * value:,.1f} ms"


def fmt_mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def fmt_rate(value: float) -> str:
    return f"{value:,.1f} tok/s"


def fmt_generic(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.4g}"


def _row(label: str, sides: Sequence[Side], path: Sequence[str],
         fmt: Callable[[float], str], comparable: bool = True) -> Row | None:
    values = [_num(_get(side, path)) for side in sides]
    if all(v is None for v in values):
        return None
    ratio = ""
    if comparable and len(values) >= 2 and values[0] and values[-1] is not None:
        ratio = f"{values[-1] / values[0]:.3f}×"
    return Row(label, ["–" if v is None else fmt(v) for v in values], ratio)


def _union(sides: Sequence[Side], key: str) -> list[str]:
    names: list[str] = []
    for side in sides:
        for name in side.get(key) or {}:
            if name not in names:
                names.append(name)
    return names


def _shape(sides: Sequence[Side], key: str, fields: Sequence[str]) -> str:
    for side in sides:
        block = side.get(key)
        if isinstance(block, Mapping) and all(f in block for f in fields):
            return "×".join(str(block[f]) for f in fields)
    return ""


def comparison_rows(sides: Sequence[Side]) -> list[Row]:
    """Rows for the metrics any of ``sides`` holds (one side, or dense then pruned)."""
    seq = next((s["ppl_seq_len"] for s in sides if "ppl_seq_len" in s), None)
    specs: list[tuple[str, Sequence[str], Callable[[float], str]]] = [
        ("parameters", ("params",), fmt_int),
        ("non-embedding parameters", ("params_non_embedding",), fmt_int),
    ]
    memory_ratio = peak_memory_comparable(*sides)
    for name in _union(sides, "ppl"):
        specs.append((f"perplexity {name}" + (f" (seq {seq})" if seq else ""), ("ppl", name),
                      fmt_float))
    for task in _union(sides, "zero_shot"):
        for metric in ("acc", "acc_norm"):
            specs.append((f"{task} {metric} (%)", ("zero_shot", task, metric), fmt_pct))
    specs.append(("zero-shot average acc (%)", ("zero_shot_average",), fmt_pct))
    forward = _shape(sides, "forward", ("batch_size", "seq_len"))
    # per device only where there is more than one (one would repeat the row above)
    devices = _union([side.get("forward") or {} for side in sides], "peak_memory_by_device")
    devices = devices if len(devices) > 1 else []
    specs += [
        (f"forward latency ({forward})", ("forward", "latency_s"), fmt_ms),
        (f"peak memory of a forward ({forward}{'' if memory_ratio else ', process RSS'})",
         ("forward", "peak_memory_bytes"), fmt_mib),
        *[(f"peak memory of a forward on {key}" + (", process RSS" if key == "cpu" else ""),
           ("forward", "peak_memory_by_device", key), fmt_mib) for key in devices],
        ("weights in memory", ("model_bytes",), fmt_mib),
        ("size on disk", ("disk_bytes",), fmt_mib),
        (f"generation ({_shape(sides, 'generation', ('batch_size', 'new_tokens'))} tokens)",
         ("generation", "tokens_per_s"), fmt_rate),
    ]
    for key in _union_keys(sides):
        if key in HANDLED_KEYS:
            continue
        values = [side.get(key) for side in sides]
        if any(_num(v) is not None for v in values):
            specs.append((key, (key,), fmt_generic))
            continue
        for sub in _union(sides, key):
            if any(_num(_get(side, (key, sub))) is not None for side in sides):
                specs.append((f"{key} {sub}", (key, sub), fmt_generic))
    rows = [_row(label, sides, path, fmt, _ratio_meaningful(path, memory_ratio))
            for label, path, fmt in specs]
    return [row for row in rows if row is not None]


def _ratio_meaningful(path: Sequence[str], cuda_memory: bool) -> bool:
    """A pruned/dense ratio is shown for every row but RSS peaks (see
    :func:`~pgprune_core.evaluation.efficiency.peak_memory_comparable`)."""
    if path[-1] == "peak_memory_bytes":
        return cuda_memory
    if len(path) >= 2 and path[-2] == "peak_memory_by_device":
        return path[-1] != "cpu"
    return True


def _union_keys(sides: Sequence[Side]) -> list[str]:
    keys: list[str] = []
    for side in sides:
        keys += [k for k in side if k not in keys]
    return keys


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   numeric: bool = True) -> str:
    """A GitHub-flavoured markdown table: first column left-aligned, the others right-aligned
    when they hold numbers (``numeric``), else left-aligned."""
    other = "---:" if numeric else ":---"
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + [other] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _pruning_rows(pruning: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if "rate" in pruning:
        rows.append(("prune rate", f"{pruning['rate']:.0%}"))
    for key, label in (("budget", "budget"), ("granularity", "granularity"),
                       ("protect_layers", "protected layers (first, last)")):
        if key in pruning:
            value = pruning[key]
            rows.append((label, ", ".join(map(str, value)) if isinstance(value, list) else str(value)))
    if "prunable_params_removed" in pruning:
        rows.append(("prunable parameters removed", f"{pruning['prunable_params_removed']:.2%}"))
    if "total_params_removed" in pruning:
        rows.append(("all parameters removed", f"{pruning['total_params_removed']:.2%}"))
    if "params_removed" in pruning:
        rows.append(("parameters removed", f"{pruning['params_removed']:,}"))
    totals = pruning.get("units_total") or {}
    for kind, kept in (pruning.get("units_kept") or {}).items():
        total = totals.get(kind)
        rows.append((f"{kind} units kept",
                     f"{kept:,} of {total:,} ({kept / total:.1%})" if total else f"{kept:,}"))
    return rows


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cost_rows(run: Mapping[str, Any], loop_key: str, loop_label: str) -> list[tuple[str, str]]:
    """Time in the loop, wall time and peak memory."""
    rows = [(label, _duration(float(run[key])))
            for key, label in ((loop_key, loop_label), ("wall_s", "wall time")) if key in run]
    if "peak_memory_bytes" in run:
        method = f" ({run['peak_memory_method']})" if run.get("peak_memory_method") else ""
        rows.append(("peak memory", f"{run['peak_memory_bytes'] / 2**30:.2f} GiB{method}"))
    by_device = run.get("peak_memory_by_device") or {}
    if len(by_device) > 1:
        rows += [(f"peak memory on {key}" + (" (process RSS)" if key == "cpu" else ""),
                  f"{value / 2**30:.2f} GiB") for key, value in by_device.items()]
    return rows


def _run_rows(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    labels = {
        "steps": "optimisation steps", "forward_passes": "forward passes",
        "backward_passes": "backward passes", "skipped_steps": "skipped steps (NaN loss)",
    }
    for key, label in labels.items():
        if key in run:
            rows.append((label, f"{run[key]:,}"))
    rows += _cost_rows(run, "optimize_s", "time in the optimisation loop")
    for key in ("device", "adapter", "estimator", "init", "seed"):
        if key in run:
            rows.append((key, str(run[key])))
    return rows


def _settings_rows(config: Any) -> list[tuple[str, str]]:
    """The settings that decide the result, from a RunConfig (the rest is in config.yaml)."""
    data = json.loads(config.model_dump_json())
    model, d, training = data["model"], data["data"], data["training"]
    calib = d.get("calib_file") or d.get("calib")
    if d.get("calib_slice"):
        calib = f"{calib} [{d['calib_slice']}]"

    def options(section: Mapping[str, Any]) -> str:
        rest = {k: v for k, v in section.items() if k != "name"}
        return section["name"] + (f" {json.dumps(rest)}" if rest else "")

    return [
        ("model", str(model.get("name_or_path") or "(built-in demo model)")),
        ("dtype / device", f"{model['dtype']} / {model.get('device_map') or model['device']}"),
        ("calibration", f"{calib}, {d['sampling']} segments of {d['seq_len']} tokens"
         + (f", {d['n_segments']:,} segments" if d.get("n_segments") else "")),
        ("batch size / seed", f"{training['batch_size']} / {training['seed']}"),
        ("schedule", training["schedule"]),
        ("estimator", options(data["estimator"])),
        ("initializer", options(data["init"])),
        ("evaluation sets", ", ".join([*d.get("eval", []), *d.get("eval_files", [])]) or "(none)"),
    ]


def _perplexity_basis(sides: Sequence[Side]) -> list[str]:
    """One line saying how many windows and tokens each perplexity was measured on."""
    side = next((s for s in sides if isinstance(s.get("ppl_tokens"), Mapping)), None)
    if side is None:
        return []
    seq = side.get("ppl_seq_len")
    sets = []
    for name, tokens in side["ppl_tokens"].items():
        text = f"{name}: {fmt_int(tokens)} predicted tokens"
        if isinstance(seq, int) and seq > 1 and tokens % (seq - 1) == 0:
            text += f" in {fmt_int(tokens // (seq - 1))} windows of {seq}"
        sets.append(text)
    return [f"Perplexity measured on {'; '.join(sets)}.", ""]


def render_report(metrics: Mapping[str, Any], config: Any = None,
                  images: Sequence[tuple[str, str]] = ()) -> str:
    """The markdown text of ``report.md``.  ``config`` (a RunConfig) adds the settings
    section; ``images`` are (alt text, relative path) pairs to embed."""
    dense, pruned = metrics.get("dense") or {}, metrics.get("pruned") or {}
    sides = [s for s in (dense, pruned) if s]
    names = [n for n, s in (("dense", dense), ("pruned", pruned)) if s]
    parts = ["# pgprune report", ""]
    pruning = metrics.get("pruning") or {}
    if pruning:
        summary = f"{pruning.get('rate', 0):.0%} prune rate, {pruning.get('budget', '?')} budget"
        if "granularity" in pruning:
            summary += f", units: {', '.join(pruning['granularity'])}"
        parts += [summary + ".", ""]
    if sides:
        header = ["metric", *names] + (["pruned / dense"] if len(sides) == 2 else [])
        rows = [[r.label, *r.values] + ([r.ratio] if len(sides) == 2 else [])
                for r in comparison_rows(sides)]
        parts += ["## Dense vs pruned" if len(sides) == 2 else f"## {names[0]}", "",
                  markdown_table(header, rows), ""]
        parts += _perplexity_basis(sides)
    if pruning:
        parts += ["## Pruning", "", markdown_table(["setting", "value"], _pruning_rows(pruning), numeric=False), ""]
    run = metrics.get("run") or {}
    if run:
        parts += ["## Run", "", markdown_table(["", "value"], _run_rows(run), numeric=False), ""]
    if config is not None:
        parts += ["## Settings", "", markdown_table(["setting", "value"], _settings_rows(config), numeric=False),
                  "", "The full configuration is in `config.yaml`.", ""]
    for alt, rel in images:
        parts += [f"![{alt}]({rel})", ""]
    return "\n".join(parts)


def _finetune_rows(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    labels = (("steps", "optimiser steps"), ("examples", "training examples"),
              ("data_format", "training data"), ("tokens_seen", "target tokens seen"),
              ("objective", "objective"), ("trainable_params", "trainable (LoRA) parameters"),
              ("target_modules", "adapted modules"), ("first_loss", "training loss, first step"),
              ("last_loss", "training loss, last step"))
    for key, label in labels:
        value = run.get(key)
        if value is None:
            continue
        if isinstance(value, float):
            text = f"{value:.4f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        elif isinstance(value, list):
            text = ", ".join(map(str, value))
        else:
            text = str(value)
        rows.append((label, text))
    rows += _cost_rows(run, "train_s", "time in the training loop")
    for key in ("device", "format", "teacher", "seed"):
        if run.get(key) is not None:
            rows.append((key, str(run[key])))
    return rows


def render_finetune_report(metrics: Mapping[str, Any], config_text: str = "",
                           images: Sequence[tuple[str, str]] = ()) -> str:
    """The markdown text of a fine-tune's ``report.md``: before / after (and the dense
    teacher when it was measured), the training run, the configuration."""
    named = [(name, metrics.get(key) or {}) for name, key in
             (("dense (teacher)", "teacher"), ("pruned, before", "before"),
              ("pruned, after", "after"))]
    named = [(name, side) for name, side in named if side]
    parts = ["# pgprune recovery fine-tuning", ""]
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    if named:
        rows = [[r.label, *r.values] for r in comparison_rows([s for _, s in named])]
        if before and after:
            pairs = {r.label: r.ratio for r in comparison_rows([before, after])}
            rows = [[*row, pairs.get(row[0], "")] for row in rows]
        header = ["metric", *[n for n, _ in named]] + (["after / before"] if before and after else [])
        parts += ["## Before vs after", "", markdown_table(header, rows), ""]
        parts += _perplexity_basis([s for _, s in named])
    run = metrics.get("finetune") or {}
    if run:
        parts += ["## Fine-tuning", "", markdown_table(["", "value"], _finetune_rows(run), numeric=False), ""]
    for alt, rel in images:
        parts += [f"![{alt}]({rel})", ""]
    if config_text:
        parts += ["## Configuration", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(parts)
