"""The mistral adapter, installed as a third party would install it."""

from __future__ import annotations

import pytest
import torch
from pgprune_mistral import MistralAdapter
from pgprune_mistral.plugin import pgprune_resolve_adapter
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from pgprune_core import ModelSource, load_pruned
from pgprune_core.model.hf_adapter import resolve_adapter
from pgprune_core.model.structure import UnitLayout
from pgprune_core.model.surgery import prune_model, save_pruned
from pgprune_core.testing import save_tiny_model
from pgprune_core.testing.adapter_suite import AdapterSuite, tiny_decoder


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mistral", "mistral")


def test_adapter_is_registered_by_this_distribution(registry):
    spec = registry.get("adapter", "mistral")
    assert spec.cls is MistralAdapter
    assert spec.origin.distribution == "pgprune-mistral"


def test_resolution(mistral_dir, registry):
    assert pgprune_resolve_adapter(MistralConfig()) == "mistral"
    assert pgprune_resolve_adapter(LlamaConfig()) is None
    assert resolve_adapter(str(mistral_dir), registry=registry) == "mistral"


def test_load_and_describe_gqa(mistral_dir):
    loaded = MistralAdapter().load(ModelSource(str(mistral_dir)))
    assert loaded.model.config.sliding_window == 16
    structure = MistralAdapter().describe_model(loaded.model)
    site = structure.layers[0].attention
    assert (site.n_heads, site.n_kv_heads, site.group_size) == (4, 2, 2)


def test_pruned_mistral_keeps_its_sliding_window_through_save_and_load(
        mistral_dir, tmp_path, registry):
    loaded = MistralAdapter().load(ModelSource(str(mistral_dir)))
    model = loaded.model
    structure = MistralAdapter().describe_model(model)
    granularities = {kind: registry.cls("granularity", kind)() for kind in ("channel", "head", "layer")}
    layout = UnitLayout([g.units(structure) for g in granularities.values()])
    keep = torch.rand(len(layout), generator=torch.Generator().manual_seed(1)) > 0.3
    parts = layout.split(keep)
    parts["layer"][:] = True
    parts["layer"][1] = False
    prune_model(structure, layout, granularities, layout.join(parts))
    path = save_pruned(model, loaded.tokenizer, tmp_path / "pruned", adapter_name="mistral",
                       base_model=str(mistral_dir))
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(2))
    expected = model.generate(ids, max_new_tokens=24, do_sample=False, use_cache=False)
    for reloaded in (load_pruned(path),
                     AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)):
        assert reloaded.config.sliding_window == 16 and reloaded.config.num_hidden_layers == 3
        # 30 tokens > the 16-token window: the sliding-window KV cache must agree
        got = reloaded.generate(ids, max_new_tokens=24, do_sample=False, use_cache=True)
        assert torch.equal(got, expected)


class TestMistral(AdapterSuite):
    """The shared adapter checks (pgprune_core.testing.adapter_suite)."""

    adapter = "mistral"
    distribution = "pgprune-mistral"
    variants = {
        "gqa-sliding-untied": lambda: tiny_decoder(MistralConfig, sliding_window=8),
        "mha-tied": lambda: tiny_decoder(MistralConfig, num_key_value_heads=4, sliding_window=8,
                                         tie_word_embeddings=True),
    }
