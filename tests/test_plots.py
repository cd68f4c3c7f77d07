"""Plots from plain data: per-layer sparsity and the optimisation curves."""

from __future__ import annotations

import json
import math

import pytest

from pgprune_core.report.plots import plot_loss, plot_sparsity, pruned_fraction_by_layer, read_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def test_pruned_fraction_by_layer():
    kinds = ["head"] * 4 + ["channel"] * 4 + ["layer"] * 2
    layers = [0, 0, 1, 1, 0, 0, 0, 1, 0, 1]
    keep = [1, 0, 0, 0, 1, 1, 1, 0, 1, 0]
    fractions = pruned_fraction_by_layer(kinds, layers, keep, n_layers=3)
    assert fractions["head"][:2] == [0.5, 1.0] and math.isnan(fractions["head"][2])
    assert fractions["channel"][:2] == [0.0, 1.0]
    assert fractions["layer"][:2] == [0.0, 1.0]
    with pytest.raises(ValueError, match="outside"):
        pruned_fraction_by_layer(["head"], [5], [1], n_layers=3)


def test_plot_sparsity_writes_png(tmp_path):
    kinds = ["head"] * 8 + ["channel"] * 16 + ["layer"] * 4
    layers = [i // 2 for i in range(8)] + [i // 4 for i in range(16)] + [0, 1, 2, 3]
    keep = [i % 3 != 0 for i in range(24)] + [1, 0, 1, 1]
    path = plot_sparsity(kinds=kinds, layers=layers, keep=keep, n_layers=4,
                         path=tmp_path / "sparsity.png", title="test")
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["sparsity.png"]


def test_plot_loss_from_jsonl_with_gaps_and_torn_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "stage": s // 20, "rate": 0.1 * (1 + s // 20),
                "loss": None if s == 7 else 5.0 - s / 50, "skipped": s == 7,
                "baseline": 5.0 - s / 60, "expected_kept": 0.7, "lr": 1e-3} for s in range(1, 41)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 41, "lo')
    assert len(read_jsonl(log)) == 40
    assert plot_loss(log, tmp_path / "loss.png").read_bytes()[:8] == PNG
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no records"):
        plot_loss(empty, tmp_path / "x.png")
