"""The ``attention`` and ``mlp`` kinds (a layer's whole attention / MLP block), alone and
with the others: masked == pruned, exact accounting, generation, save / load, the decilm
export's no_op blocks and a run end to end."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pgprune_core.model.accounting import removed_params
from pgprune_core.model.export import export_pruned
from pgprune_core.model.surgery import load_pruned, prune_model, save_pruned
from pgprune_core.testing import tiny_tokenizer

from .conftest import ARCHS, logits, masked_logits

EVERY_KIND = ("channel", "head", "attention", "mlp", "layer")
COMBINATIONS = [("attention",), ("mlp",), ("attention", "mlp"), ("head", "attention"),
                ("channel", "mlp", "layer"), EVERY_KIND]




def _keep(setup, seed, attention=(), mlp=(), drop_layers=()):
    generator = torch.Generator().manual_seed(seed)
    parts = setup.layout.split(torch.rand(len(setup.layout), generator=generator) >= 0.3)
    for kind, gone in (("attention", attention), ("mlp", mlp), ("layer", drop_layers)):
        if kind in parts:
            parts[kind][:] = True
            parts[kind][list(gone)] = False
    return setup.layout.join(parts)


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_pruned_equals_masked_and_accounting_is_exact(make_setup, arch, tied):
    for kinds in COMBINATIONS:
        setup = make_setup(arch, kinds=kinds, tie_word_embeddings=tied)
        ids = setup.ids(rows=2, length=12)
        keep = _keep(setup, seed=len(kinds), attention=[0, 2], mlp=[1, 2], drop_layers=[3])
        masked = masked_logits(setup, ids, keep)
        before = sum(p.numel() for p in setup.model.parameters())
        prune_model(setup.structure, setup.layout, setup.granularities, keep)
        after = sum(p.numel() for p in setup.model.parameters())
        assert (masked - logits(setup.model, ids)).abs().max() <= 1e-4, kinds
        assert before - after == removed_params(setup.layout, keep), kinds
        shapes = [(s.attention.n_heads, s.mlp.intermediate_size) for s in setup.structure.layers]
        if "attention" in kinds:
            assert shapes[0][0] == 0 and shapes[2][0] == 0
        if "mlp" in kinds:
            assert shapes[1][1] == 0 and shapes[2][1] == 0


def test_a_block_unit_costs_what_its_heads_or_channels_cost_together(make_setup):
    setup = make_setup("llama3", kinds=EVERY_KIND)
    layout = setup.layout
    for block, part in (("attention", "head"), ("mlp", "channel")):
        per_layer = [int(layout[part].cost[layout[part].layer == i].sum()) for i in range(4)]
        assert layout[block].cost.tolist() == per_layer
    # a block and units inside it, both cut: counted once
    keep = torch.ones(len(layout), dtype=torch.bool)
    keep[layout.offsets["attention"].start] = False
    keep[layout.offsets["head"].start] = False
    assert removed_params(layout, keep) == int(layout["attention"].cost[0])


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_generation_and_save_load_without_blocks(make_setup, arch, tmp_path):
    setup = make_setup(arch, kinds=("attention", "mlp"))
    keep = _keep(setup, seed=0, attention=[0], mlp=[0, 3])
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    ids = setup.ids(rows=2, length=5)
    cached = setup.model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
    uncached = setup.model.generate(ids, max_new_tokens=20, do_sample=False, use_cache=False,
                                    pad_token_id=0)
    assert torch.equal(cached, uncached)
    path = save_pruned(setup.model, tiny_tokenizer(), tmp_path / "m", adapter_name=setup.adapter_name,
                       base_model="x")
    assert (logits(load_pruned(path), ids) - logits(setup.model, ids)).abs().max() <= 1e-4


def test_decilm_writes_dropped_blocks_as_no_op(make_setup, tmp_path):
    setup = make_setup("llama3", kinds=("attention", "mlp", "layer"))
    ids = setup.ids(rows=2, length=8)
    keep = _keep(setup, seed=0, attention=[1], mlp=[2], drop_layers=[0])
    masked = masked_logits(setup, ids, keep)
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    result = export_pruned(setup.model, tiny_tokenizer(), tmp_path / "d", "decilm",
                           adapter_name="llama", base_model="x")
    blocks = json.loads((result.path / "config.json").read_text())["block_configs"]
    assert [(b["attention"]["no_op"], b["ffn"]["no_op"]) for b in blocks] == [
        (True, True), (True, False), (False, True), (False, False)]
    model = AutoModelForCausalLM.from_pretrained(result.path, trust_remote_code=True)
    assert (logits(model, ids) - masked).abs().max() <= 1e-4


def test_run_end_to_end_with_block_kinds(tmp_path):
    from pgprune_core.config.resolve import resolve_config
    from pgprune_core.run.pipeline import run_pipeline
    from pgprune_core.testing import save_run_assets

    assets = save_run_assets(tmp_path / "assets", calib_chars=6000, eval_chars=6000)
    config = resolve_config(None, None, {
        "model.name_or_path": str(assets["model"]), "data.calib_file": str(assets["calib"]),
        "data.eval": [], "data.eval_files": [str(assets["eval"])], "data.seq_len": 16,
        "data.cache_dir": str(tmp_path / "cache"), "training.steps": 3, "training.batch_size": 2,
        "init.name": "magnitude", "estimator.lr": 0.05, "estimator.scale_lr_to_steps": False,
        "evaluation.evaluators": ["perplexity"], "evaluation.seq_len": 16,
        "pruning.granularity": "attention,mlp,channel", "pruning.prune_rate": 0.5,
        "output.dir": str(tmp_path / "run"), "output.format": "decilm",
    })
    result = run_pipeline(config)
    pruning = result.metrics["pruning"]
    assert pruning["units_kept"]["attention"] == 2 and pruning["units_kept"]["mlp"] == 2
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model", trust_remote_code=True)
    blocks = model.config.block_configs
    assert sum(b.attention.no_op for b in blocks) == 2 and sum(b.ffn.no_op for b in blocks) == 2
