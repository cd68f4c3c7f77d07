"""Efficiency: parameter counts, bytes, latency, generation speed, dense-vs-pruned ratios."""

from __future__ import annotations

import pytest
import torch

from pgprune_core.evaluation.efficiency import count_parameters, ratios, size_on_disk
from pgprune_core.interfaces import EvalContext
from pgprune_core.plugin.registry import get_registry
from pgprune_core.testing import tiny_model, tiny_tokenizer


def test_parameter_counts_untied_and_tied():
    untied = tiny_model()
    vocab, hidden = untied.config.vocab_size, untied.config.hidden_size
    counted = count_parameters(untied)
    assert counted.total == sum(p.numel() for p in untied.parameters())
    assert counted.non_embedding == counted.total - 2 * vocab * hidden
    tied = tiny_model(tie_word_embeddings=True)
    counted = count_parameters(tied)
    assert counted.non_embedding == counted.total - vocab * hidden


def test_ratios_use_what_both_sides_hold():
    dense = {"params": 100, "forward": {"latency_s": 2.0}, "generation": {"tokens_per_s": 10.0}}
    pruned = {"params": 70, "forward": {"latency_s": 1.5}, "disk_bytes": 5}
    assert ratios(pruned, dense) == {"params": 0.7, "latency_s": 0.75}
    cuda = {"memory_method": "cuda"}
    dense["forward"] |= {"peak_memory_bytes": 400, **cuda}
    pruned["forward"] |= {"peak_memory_bytes": 300, **cuda}
    assert ratios(pruned, dense)["peak_memory_bytes"] == 0.75
    dense["forward"]["memory_method"] = "rss-sampled"
    assert "peak_memory_bytes" not in ratios(pruned, dense)


def test_efficiency_evaluator_on_saved_model(tmp_path):
    model = tiny_model()
    tokenizer = tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    cls = get_registry().cls("evaluator", "efficiency")
    evaluator = cls(cls.Config(repeats=2, generate_tokens=4, generate_repeats=1, seq_len=16))
    ctx = EvalContext(model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                      label="dense", seq_len=64, model_path=tmp_path / "m")
    dense = evaluator.evaluate(ctx)
    assert dense["params"] == sum(p.numel() for p in model.parameters())
    assert 0 <= dense["model_bytes"] - 4 * dense["params"] < 4096  # + small buffers (RoPE)
    weights = tmp_path / "m" / "model.safetensors"
    assert dense["disk_bytes"] == size_on_disk(tmp_path / "m") == weights.stat().st_size
    forward = dense["forward"]
    assert (forward["batch_size"], forward["seq_len"], forward["repeats"]) == (1, 16, 2)
    assert 0 < forward["latency_min_s"] <= forward["latency_s"]
    assert forward["peak_memory_bytes"] > 0 and forward["memory_method"].startswith("rss")
    assert dense["generation"]["new_tokens"] == 4 and dense["generation"]["tokens_per_s"] > 0
    assert "vs_dense" not in dense

    smaller = tiny_model(intermediate_size=24)
    ctx = EvalContext(model=smaller, tokenizer=tokenizer, device=torch.device("cpu"),
                      label="pruned", reference=dense)
    pruned = cls(cls.Config(repeats=1, generate_tokens=0)).evaluate(ctx)
    assert "generation" not in pruned and "disk_bytes" not in pruned
    expected = sum(p.numel() for p in smaller.parameters()) / dense["params"]
    assert pruned["vs_dense"]["params"] == pytest.approx(expected)
    assert pruned["vs_dense"]["params"] < 1
    # CPU peak memory is process RSS: reported, but not turned into a pruned/dense ratio
    assert set(pruned["vs_dense"]) == {"params", "params_non_embedding", "model_bytes", "latency_s"}
