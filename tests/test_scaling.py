"""The arithmetic of docs/scaling.md, held against the real thing.

- Parameter and unit counts of the four public configs the page uses, counted on models
  built on the ``meta`` device (no memory) and through the project's own granularities.
- The bytes autograd stores per token and layer for a backward pass, for the two
  back-propagating settings of the page, measured with ``saved_tensors_hooks`` on tiny
  bfloat16 LLaMAs (the difference between 3 and 2 layers, parameters excluded) against the
  page's coefficients: trainable weights (taylor) ``20.3 h + 4 h_kv + 8 I`` and frozen
  weights with soft channel + head masks (gumbel) ``12.5 h + 4 h_kv + 8 I``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from pgprune_core.model.masking import LossOracle
from pgprune_core.model.structure import UnitLayout
from pgprune_core.plugin.registry import adapters, granularities
from pgprune_core.testing import tiny_config

#: docs/scaling.md, "The models": (config, parameters, {unit kind: units})
MODELS: dict[str, tuple[dict[str, Any], int, dict[str, int]]] = {
    "LLaMA-2-7B": (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32),
                   6_738_415_616, {"channel": 352_256, "head": 1_024}),
    "LLaMA-2-13B": (dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                         num_attention_heads=40, num_key_value_heads=40),
                    13_015_864_320, {"channel": 552_960, "head": 1_600}),
    "LLaMA-2-70B": (dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8),
                    68_976_648_192, {"channel": 2_293_760, "head": 640}),
}
MIXTRAL = (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                num_experts_per_tok=2), 46_702_792_704, 12_879_925_248,
           {"expert": 256, "head": 256})


def _units(model: Any, adapter: str, kinds: tuple[str, ...]) -> dict[str, int]:
    structure = adapters()[adapter]().describe_model(model)
    registered = granularities()
    return {kind: len(registered[kind]().units(structure)) for kind in kinds}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_llama_parameter_and_unit_counts(name: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape, params, units = MODELS[name]
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, **shape))
    assert sum(p.numel() for p in model.parameters()) == params
    assert _units(model, "llama", tuple(units)) == units


def test_mixtral_parameter_active_and_unit_counts() -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    shape, params, active, units = MIXTRAL
    with torch.device("meta"):
        model = MixtralForCausalLM(MixtralConfig(vocab_size=32000, **shape))
    assert sum(p.numel() for p in model.parameters()) == params
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    top_k, n_experts = shape["num_experts_per_tok"], shape["num_local_experts"]
    assert params - expert + expert * top_k // n_experts == active
    assert _units(model, "mixtral", tuple(units)) == units


def _saved_bytes_per_token_layer(setting: str, h: int, heads: int, kv: int, inter: int,
                                 length: int, rows: int = 3) -> float:
    """Bytes autograd keeps for the backward, per token and decoder layer (bfloat16)."""

    def saved(layers: int) -> int:
        config = tiny_config("llama", vocab_size=256, hidden_size=h, intermediate_size=inter,
                             num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=kv, attn_implementation="sdpa")
        torch.manual_seed(0)
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        tokens = torch.randint(0, 256, (rows, length))
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        if setting == "taylor":  # gradients w.r.t. the weights
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                model(input_ids=tokens, use_cache=False).logits.float().mean().backward()
        else:  # gumbel: frozen weights, gradients w.r.t. soft channel + head masks
            structure = adapters()["llama"]().describe_model(model)
            registered = granularities()
            chosen = {kind: registered[kind]() for kind in ("channel", "head")}
            layout = UnitLayout([g.units(structure) for g in chosen.values()])
            oracle = LossOracle(model, structure, layout, chosen)
            soft = torch.full((1, len(layout)), 0.5, requires_grad=True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                oracle.loss(tokens, soft).backward()
            assert soft.grad is not None and soft.grad.abs().sum() > 0
        return sum(storages.values())

    return (saved(3) - saved(2)) / (rows * length)


@pytest.mark.parametrize("setting, coefficient", [("taylor", 20.3), ("gumbel", 12.5)])
@pytest.mark.parametrize("h, heads, kv, inter, length", [(64, 4, 2, 176, 32), (128, 8, 2, 344, 64)])
def test_saved_activations_per_token_and_layer(setting: str, coefficient: float, h: int,
                                               heads: int, kv: int, inter: int,
                                               length: int) -> None:
    h_kv = h * kv // heads
    formula = coefficient * h + 4 * h_kv + 8 * inter
    measured = _saved_bytes_per_token_layer(setting, h, heads, kv, inter, length)
    assert measured == pytest.approx(formula, rel=0.05)
