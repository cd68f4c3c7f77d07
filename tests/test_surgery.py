"""Surgery (masked == pruned), parameter accounting, generation, save / load of pruned models."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pgprune_core import load_pruned as public_load_pruned
from pgprune_core.errors import ModelError, UnknownPluginError
from pgprune_core.model import pruned_modeling
from pgprune_core.model.accounting import removed_params
from pgprune_core.model.surgery import MODELING_FILE, load_pruned, prune_model, save_pruned
from pgprune_core.testing import tiny_tokenizer

from .conftest import ALL_KINDS, ARCHS, logits, masked_logits

COMBINATIONS = [("channel",), ("head",), ("layer",), ("channel", "head"), ALL_KINDS]


_logits, _masked_logits = logits, masked_logits


def _pruned(make_setup, arch="llama", tied=False, **keep_args):
    setup = make_setup(arch, tie_word_embeddings=tied)
    keep = setup.keep(**keep_args)
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    return setup


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_pruned_logits_equal_masked_logits_and_accounting_is_exact(make_setup, arch, tied):
    for kinds in COMBINATIONS:
        setup = make_setup(arch, tie_word_embeddings=tied).restrict(kinds)
        ids = setup.ids(rows=2, length=16)
        # layer 0 loses every head, layer 1 every channel, layer 2 is dropped (when pruned)
        keep = setup.keep(seed=len(kinds), rate=0.35, no_heads=[0], no_channels=[1],
                          drop_layers=[2])
        masked = _masked_logits(setup, ids, keep)
        before = sum(p.numel() for p in setup.model.parameters())
        summary = prune_model(setup.structure, setup.layout, setup.granularities, keep)
        after = sum(p.numel() for p in setup.model.parameters())
        assert (masked - _logits(setup.model, ids)).abs().max() <= 1e-4, kinds
        assert before - after == removed_params(setup.layout, keep) == summary["params_removed"]
        assert (summary["params_before"], summary["params_after"]) == (before, after)
        assert summary["dropped_layers"] == ([2] if "layer" in kinds else [])


def test_output_biases_remain_when_every_head_or_channel_of_a_layer_is_cut(
        make_setup, tokenizer, tmp_path):
    setup = make_setup("llama3", kinds=("channel", "head"), attention_bias=True, mlp_bias=True)
    ids = setup.ids(rows=2, length=10)
    keep = setup.keep(seed=11, no_heads=[0, 1], no_channels=[1, 2])
    masked = _masked_logits(setup, ids, keep)
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    assert setup.model.model.layers[1].self_attn.o_proj.bias is not None
    assert (masked - _logits(setup.model, ids)).abs().max() <= 1e-4
    path = save_pruned(setup.model, tokenizer, tmp_path / "m", adapter_name="llama", base_model="x")
    assert (_logits(load_pruned(path), ids) - masked).abs().max() <= 1e-4


def test_accounting_counts_units_inside_a_dropped_layer_once(make_setup):
    setup = make_setup("llama")
    keep = torch.ones(len(setup.layout), dtype=torch.bool)
    keep[setup.layout.offsets["channel"].start] = False  # a channel of layer 0
    keep[setup.layout.offsets["layer"].start] = False  # ... and layer 0 itself
    keep[setup.layout.offsets["head"].stop - 1] = False  # a head of layer 3
    layer_cost = int(setup.layout["layer"].cost[0])
    head_cost = int(setup.layout["head"].cost[-1])
    assert removed_params(setup.layout, keep) == layer_cost + head_cost
    before = sum(p.numel() for p in setup.model.parameters())
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    assert before - sum(p.numel() for p in setup.model.parameters()) == layer_cost + head_cost


def test_summary_reports_per_layer_shapes(make_setup):
    setup = _pruned(make_setup, "llama3", seed=5, no_heads=[1], drop_layers=[0])
    summary_layers = [(s.attention.n_heads, s.attention.n_kv_heads, s.mlp.intermediate_size)
                      for s in setup.structure.layers]
    assert len(summary_layers) == 3 and summary_layers[0][:2] == (0, 0)
    assert setup.model.config.pgprune == {"original_layers": [1, 2, 3], "original_num_layers": 4}


def _greedy(model, ids, n, use_cache):
    return model.generate(ids, max_new_tokens=n, do_sample=False, use_cache=use_cache,
                          pad_token_id=0)


@pytest.mark.parametrize("arch,drop", [("llama", [0]), ("llama3", [3]), ("mistral", [1])],
                         ids=["llama-drop0", "llama3-drop3", "mistral-drop1"])
def test_generation_with_kv_cache_after_pruning(make_setup, arch, drop):
    # layer 0 loses all heads (unless dropped) and the window of tiny Mistral is 16 tokens:
    # 30 new tokens run past it, so the sliding-window cache is exercised too
    setup = _pruned(make_setup, arch, seed=6, no_heads=[0, 2], no_channels=[1], drop_layers=drop)
    ids = setup.ids(rows=2, length=5)
    cached = _greedy(setup.model, ids, 30, use_cache=True)
    uncached = _greedy(setup.model, ids, 30, use_cache=False)
    assert cached.shape == (2, 35)
    assert torch.equal(cached, uncached)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_save_and_load_through_both_loaders(make_setup, tokenizer, tmp_path, arch, tied):
    setup = _pruned(make_setup, arch, tied, seed=7, no_heads=[0], no_channels=[3], drop_layers=[1])
    ids = setup.ids(rows=2, length=20)
    expected = _logits(setup.model, ids)
    path = save_pruned(setup.model, tokenizer, tmp_path / "pruned", adapter_name=setup.adapter_name,
                       base_model="tiny-base", extra={"prune_rate": 0.3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temp dir left
    section = json.loads((path / "config.json").read_text())["pgprune"]
    assert section["dropped_layers"] == [1] and section["original_layers"] == [0, 2, 3]
    assert section["base_class"].startswith("transformers.") and section["base_model"] == "tiny-base"
    assert section["layers"][0]["n_heads"] == 0 and section["layers"][2]["intermediate_size"] == 0
    assert section["extra"] == {"prune_rate": 0.3}
    assert (path / MODELING_FILE).is_file() and (path / "tokenizer.json").is_file()

    ours = public_load_pruned(path)
    theirs = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    for model in (ours, theirs):
        assert (_logits(model, ids) - expected).abs().max() <= 1e-5
        assert sum(p.numel() for p in model.parameters()) == sum(
            p.numel() for p in setup.model.parameters())
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    assert torch.equal(_greedy(ours, ids[:, :4], 12, True), _greedy(setup.model, ids[:, :4], 12, True))


def test_a_loaded_pruned_model_can_be_pruned_again(make_setup, registry, tokenizer, tmp_path):
    setup = _pruned(make_setup, "llama", seed=8, drop_layers=[1])
    first = save_pruned(setup.model, tokenizer, tmp_path / "first", adapter_name="llama",
                        base_model="tiny")
    model = load_pruned(first)
    structure = registry.cls("adapter", "llama")().describe_model(model)
    layer = registry.cls("granularity", "layer")()
    from pgprune_core.model.structure import UnitLayout

    layout = UnitLayout([layer.units(structure)])
    prune_model(structure, layout, {"layer": layer}, torch.tensor([False, True, True]))
    ids = torch.randint(3, 300, (1, 9))
    second = save_pruned(model, tokenizer, tmp_path / "second", adapter_name="llama",
                         base_model=str(first))
    section = json.loads((second / "config.json").read_text())["pgprune"]
    assert section["dropped_layers"] == [0, 1] and section["original_layers"] == [2, 3]
    assert (_logits(load_pruned(second), ids) - _logits(model, ids)).abs().max() <= 1e-5


def test_load_in_another_dtype(make_setup, tokenizer, tmp_path):
    setup = _pruned(make_setup, "llama3", seed=9)
    path = save_pruned(setup.model, tokenizer, tmp_path / "m", adapter_name="llama", base_model="x")
    model = load_pruned(path, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelError, match="dtype must be one of"):
        load_pruned(path, dtype="int8")


def test_save_overwrites_a_previous_save_but_not_a_foreign_directory(make_setup, tokenizer, tmp_path):
    setup = _pruned(make_setup, "llama", seed=10)
    target = tmp_path / "out"
    save_pruned(setup.model, tokenizer, target, adapter_name="llama", base_model="a")
    save_pruned(setup.model, tokenizer, target, adapter_name="llama", base_model="b")
    assert json.loads((target / "config.json").read_text())["pgprune"]["base_model"] == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="refusing to overwrite"):
        save_pruned(setup.model, tokenizer, foreign, adapter_name="llama", base_model="a")
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(UnknownPluginError):
        save_pruned(setup.model, tokenizer, tmp_path / "x", adapter_name="nosuch", base_model="a")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    from pgprune_core.model.structure import UnitLayout
    from pgprune_core.plugin.registry import get_registry
    from pgprune_core.testing import tiny_model

    model = tiny_model("llama")
    registry = get_registry()
    structure = registry.cls("adapter", "llama")().describe_model(model)
    channel = registry.cls("granularity", "channel")()
    layout = UnitLayout([channel.units(structure)])
    keep = torch.arange(len(layout)) % 3 != 0
    prune_model(structure, layout, {"channel": channel}, keep)
    return save_pruned(model, tokenizer, tmp_path_factory.mktemp("saved") / "model",
                       adapter_name="llama", base_model="tiny")


def _broken(saved_model, tmp_path, name, content):
    path = tmp_path / "broken"
    shutil.copytree(saved_model, path)
    if content is None:
        (path / name).unlink()
    else:
        (path / name).write_bytes(content)
    return path


@pytest.mark.parametrize("name,content,message", [
    ("config.json", None, "config.json is missing"),
    ("config.json", b"{not json", "config.json is not valid JSON"),
    ("config.json", b'{"model_type": "llama"}', "config.json has no complete 'pgprune' section"),
    (MODELING_FILE, None, f"{MODELING_FILE} is missing"),
    (MODELING_FILE, b"def broken(:\n", f"{MODELING_FILE} is corrupt"),
    ("model.safetensors", None, "model.safetensors is missing"),
    ("model.safetensors", b"\x00\x01garbage", "cannot load the weights in .*model.safetensors"),
])
def test_broken_directories_fail_with_the_file_named(saved_model, tmp_path, name, content, message):
    with pytest.raises(ModelError, match=message):
        load_pruned(_broken(saved_model, tmp_path, name, content))


def test_weights_that_do_not_match_the_recorded_shapes_are_refused(saved_model, tmp_path):
    path = _broken(saved_model, tmp_path, "README.md", b"")
    config = json.loads((path / "config.json").read_text())
    config["pgprune"]["layers"][0]["intermediate_size"] += 1
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"model\.safetensors"):
        load_pruned(path)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_pruned(tmp_path / "nothing-here")


def test_modeling_file_is_self_contained_and_knows_no_architecture():
    source = Path(pruned_modeling.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file is copied out of the package"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "importlib", "warnings", "typing", "torch", "transformers"}
    for name in ("llama", "mistral", "vicuna", "qwen", "phi", "gemma", "self_attn",
                 "model.layers"):
        assert name not in source.lower(), name
