"""The llama and vicuna adapters, installed as a third party would install them, and the
generic loading / resolution errors they inherit from pgprune_core.model.hf_adapter."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from pgprune_llama import LlamaAdapter, VicunaAdapter
from pgprune_llama.plugin import pgprune_resolve_adapter
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig

from pgprune_core import ModelSource, load_pruned
from pgprune_core.errors import ModelError
from pgprune_core.model.hf_adapter import resolve_adapter
from pgprune_core.model.masking import apply_masks
from pgprune_core.model.structure import UnitLayout
from pgprune_core.model.surgery import prune_model, save_pruned
from pgprune_core.testing import save_tiny_model, tiny_config, tiny_model
from pgprune_core.testing.adapter_suite import AdapterSuite, tiny_decoder


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """A tiny LLaMA-3-like model (GQA, llama3 rope scaling, tied embeddings) on disk."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama3", "llama3",
                           tie_word_embeddings=True)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32)
    path = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_adapters_are_registered_by_this_distribution(registry):
    for name, cls in (("llama", LlamaAdapter), ("vicuna", VicunaAdapter)):
        spec = registry.get("adapter", name)
        assert spec.cls is cls
        assert spec.origin.distribution == "pgprune-llama"
        assert spec.origin.plugin == "llama"


def test_resolution_hook_answers_only_for_llama_configs():
    assert pgprune_resolve_adapter(LlamaConfig()) == "llama"
    vicuna = LlamaConfig()
    vicuna._name_or_path = "lmsys/vicuna-7b-v1.5"
    assert pgprune_resolve_adapter(vicuna) == "vicuna"
    assert pgprune_resolve_adapter(LlamaConfig(architectures=["VicunaForCausalLM"])) == "vicuna"
    assert pgprune_resolve_adapter(GPT2Config()) is None


def test_resolve_adapter_reads_only_the_config(llama3_dir, tmp_path, registry):
    assert resolve_adapter(str(llama3_dir), registry=registry) == "llama"
    vicuna_dir = save_tiny_model(tmp_path / "vicuna-7b-tiny", "llama")
    (vicuna_dir / "model.safetensors").unlink()  # resolution never touches the weights
    assert resolve_adapter(str(vicuna_dir), registry=registry) == "vicuna"


def test_unsupported_model_type_is_refused_with_the_supported_ones(gpt2_dir, registry):
    with pytest.raises(ModelError) as info:
        resolve_adapter(str(gpt2_dir), registry=registry)
    message = str(info.value)
    assert "model type 'gpt2' is not supported; supported: " in message
    assert "llama" in message and "vicuna" in message and "\n" not in message
    with pytest.raises(ModelError, match="does not handle model type 'gpt2'; supported: llama"):
        LlamaAdapter().load(ModelSource(str(gpt2_dir)))
    with pytest.raises(ModelError, match="does not handle model type 'gpt2'"):
        LlamaAdapter().describe_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2)))


def test_load_gives_an_eval_model_without_gradients_and_its_tokenizer(llama3_dir):
    loaded = LlamaAdapter().load(ModelSource(str(llama3_dir)))
    model = loaded.model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings kept
    assert model.config.rope_parameters["rope_type"] == "llama3"
    ids = loaded.tokenizer("Return a new dictionary", return_tensors="pt").input_ids
    reference = tiny_model("llama3", tie_word_embeddings=True)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    structure = LlamaAdapter().describe_model(model)
    site = structure.layers[0].attention
    assert (structure.n_layers, site.n_heads, site.n_kv_heads, site.head_dim) == (4, 4, 2, 8)
    assert structure.layers[0].mlp.intermediate_size == 48
    assert structure.names.q_proj == "q_proj" and structure.architecture == "llama"


def test_load_in_bfloat16(llama3_dir):
    model = LlamaAdapter().load(ModelSource(str(llama3_dir), dtype="bfloat16")).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_device_map_loads_through_accelerate_or_says_it_is_missing(llama3_dir, monkeypatch):
    if importlib.util.find_spec("accelerate") is not None:
        model = LlamaAdapter().load(ModelSource(str(llama3_dir), device_map="auto")).model
        assert next(model.parameters()).device.type in ("cpu", "cuda")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(ModelError, match="needs the accelerate package"):
        LlamaAdapter().load(ModelSource(str(llama3_dir), device_map="auto"))


def test_load_errors_name_what_is_missing_or_corrupt(llama3_dir, tmp_path):
    adapter = LlamaAdapter()
    with pytest.raises(ModelError, match=r"model directory not found: .*/nope"):
        adapter.load(ModelSource(str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"has no config.json"):
        adapter.load(ModelSource(str(empty)))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelError, match=r"corrupt/config.json"):
        adapter.load(ModelSource(str(corrupt)))
    no_weights = save_tiny_model(tmp_path / "no-weights", "llama")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"cannot load the model weights from .*no-weights"):
        adapter.load(ModelSource(str(no_weights)))
    with pytest.raises(ModelError, match="hub id 'nobody-here/no-such-model'"):
        adapter.load(ModelSource("nobody-here/no-such-model"))
    with pytest.raises(ModelError, match="dtype must be one of"):
        adapter.load(ModelSource(str(llama3_dir), dtype="int4"))


def test_prune_save_and_load_the_shared_proxy_model(shared_asset, tmp_path, registry):
    """The real (trained) proxy LLaMA: load, mask, prune channels+heads, save, reload."""
    source = shared_asset("models", "proxy-llama-7m")
    adapter = LlamaAdapter()
    loaded = adapter.load(ModelSource(str(source)))
    model = loaded.model
    structure = adapter.describe_model(model)
    granularities = {kind: registry.cls("granularity", kind)() for kind in ("channel", "head")}
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    keep = torch.rand(len(layout), generator=torch.Generator().manual_seed(0)) > 0.3
    ids = loaded.tokenizer("The tower is 324 metres tall, about the same height as an "
                           "81-storey building.", return_tensors="pt").input_ids
    with torch.no_grad(), apply_masks(structure, layout, granularities,
                                      keep.float().expand(ids.shape[0], -1)):
        masked = model(ids).logits
    prune_model(structure, layout, granularities, keep)
    with torch.no_grad():
        pruned = model(ids).logits
    assert (masked - pruned).abs().max() <= 1e-4
    path = save_pruned(model, loaded.tokenizer, tmp_path / "proxy-pruned", adapter_name="llama",
                       base_model=str(source))
    again = adapter.load(ModelSource(str(path)))  # a pruned model can be loaded to prune further
    assert [s.mlp.intermediate_size for s in adapter.describe_model(again.model).layers] == [
        s.mlp.intermediate_size for s in structure.layers]
    for reloaded in (load_pruned(path), again.model,
                     AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)):
        with torch.no_grad():
            assert (reloaded(ids).logits - pruned).abs().max() <= 1e-5


class TestLlama(AdapterSuite):
    """The shared adapter checks (pgprune_core.testing.adapter_suite)."""

    adapter = "llama"
    distribution = "pgprune-llama"
    variants = {
        "mha-bias-untied": lambda: tiny_decoder(LlamaConfig, num_key_value_heads=4,
                                                attention_bias=True, mlp_bias=True),
        "llama3-gqa-tied": lambda: tiny_config("llama3", tie_word_embeddings=True),
    }
