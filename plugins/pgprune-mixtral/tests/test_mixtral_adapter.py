"""The mixtral adapter, installed as a third party would install it."""

from __future__ import annotations

import torch
from pgprune_mixtral import MixtralAdapter
from pgprune_mixtral.plugin import pgprune_resolve_adapter
from transformers import MistralConfig, MixtralConfig

from pgprune_core import ModelSource
from pgprune_core.model.hf_adapter import resolve_adapter
from pgprune_core.testing.moe import save_tiny_moe_model


def test_adapter_is_registered_by_this_distribution(registry):
    spec = registry.get("adapter", "mixtral")
    assert spec.cls is MixtralAdapter
    assert spec.origin.distribution == "pgprune-mixtral"


def test_resolution_from_config_json(tmp_path, registry):
    assert pgprune_resolve_adapter(MixtralConfig()) == "mixtral"
    assert pgprune_resolve_adapter(MistralConfig()) is None
    path = save_tiny_moe_model(tmp_path / "tiny-mixtral", "mixtral")
    assert resolve_adapter(str(path), registry=registry) == "mixtral"


def test_load_and_describe(tmp_path):
    path = save_tiny_moe_model(tmp_path / "tiny-mixtral", "mixtral", num_experts=4)
    loaded = MixtralAdapter().load(ModelSource(str(path)))
    structure = MixtralAdapter().describe_model(loaded.model)
    site = structure.layers[1]
    assert site.mlp is None
    assert (site.experts.n_experts, site.experts.top_k, site.experts.renormalise) == (4, 2, True)
    assert site.experts.expert_params == ("gate_up_proj", "down_proj")
    assert (site.attention.n_heads, site.attention.n_kv_heads) == (4, 2)
    assert isinstance(site.experts.router.weight, torch.nn.Parameter)
