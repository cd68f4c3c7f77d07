"""The qwen2_moe and qwen3_moe adapters, installed as a third party would install them."""

from __future__ import annotations

import pytest
from pgprune_qwen_moe import Qwen2MoeAdapter, Qwen3MoeAdapter
from pgprune_qwen_moe.plugin import pgprune_resolve_adapter
from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

from pgprune_core import ModelSource
from pgprune_core.errors import ModelError
from pgprune_core.model.hf_adapter import resolve_adapter
from pgprune_core.testing.moe import save_tiny_moe_model, tiny_moe_model


@pytest.mark.parametrize("name,cls", [("qwen2_moe", Qwen2MoeAdapter), ("qwen3_moe", Qwen3MoeAdapter)])
def test_adapters_are_registered_by_this_distribution(registry, name, cls):
    spec = registry.get("adapter", name)
    assert spec.cls is cls
    assert spec.origin.distribution == "pgprune-qwen-moe"


def test_resolution_from_config_json(tmp_path, registry):
    assert pgprune_resolve_adapter(Qwen2MoeConfig()) == "qwen2_moe"
    assert pgprune_resolve_adapter(Qwen3MoeConfig()) == "qwen3_moe"
    assert pgprune_resolve_adapter(MixtralConfig()) is None
    for arch in ("qwen2_moe", "qwen3_moe"):
        path = save_tiny_moe_model(tmp_path / arch, arch)
        assert resolve_adapter(str(path), registry=registry) == arch


def test_qwen2_moe_shared_expert_is_the_dense_mlp_not_an_expert(tmp_path):
    path = save_tiny_moe_model(tmp_path / "q2", "qwen2_moe", num_experts=4, norm_topk_prob=True)
    model = Qwen2MoeAdapter().load(ModelSource(str(path))).model
    site = Qwen2MoeAdapter().describe_model(model).layers[0]
    block = model.model.layers[0].mlp
    assert site.mlp.module is block.shared_expert and site.mlp.intermediate_size == 48
    assert site.experts.module is block and site.experts.n_experts == 4
    assert site.experts.renormalise is True
    assert site.attention.q_proj.bias is not None  # Qwen2's q/k/v biases


def test_qwen2_moe_with_dense_layers_is_refused():
    model = tiny_moe_model("qwen2_moe", mlp_only_layers=[0])
    with pytest.raises(ModelError, match="every layer is sparse"):
        Qwen2MoeAdapter().describe_model(model)


def test_qwen3_moe_dense_layers_are_dense_mlps():
    model = tiny_moe_model("qwen3_moe", mlp_only_layers=[1])
    structure = Qwen3MoeAdapter().describe_model(model)
    first, second = structure.layers
    assert first.mlp is None and first.experts.n_experts == 8 and first.experts.renormalise
    assert second.experts is None and second.mlp.intermediate_size == 48
