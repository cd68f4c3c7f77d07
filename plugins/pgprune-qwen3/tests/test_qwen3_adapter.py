"""The qwen3 adapter through the shared adapter checks (pgprune_core.testing.adapter_suite);
they also check that q_norm / k_norm come out of head surgery unchanged."""

from __future__ import annotations

import torch
from transformers import Qwen3Config

from pgprune_core.testing.adapter_suite import AdapterSuite, tiny_decoder

#: head_dim 16 with hidden 32 and 4 heads: query width 64, twice the hidden size
HEAD_DIM = 16


class TestQwen3(AdapterSuite):
    adapter = "qwen3"
    distribution = "pgprune-qwen3"
    variants = {
        "gqa-sliding-untied": lambda: tiny_decoder(
            Qwen3Config, head_dim=HEAD_DIM, use_sliding_window=True, sliding_window=8,
            max_window_layers=2),
        "mha-bias-tied": lambda: tiny_decoder(
            Qwen3Config, head_dim=HEAD_DIM, num_key_value_heads=4, attention_bias=True,
            tie_word_embeddings=True),
    }


def test_q_and_k_norms_survive_head_surgery(registry):
    from pgprune_core.model.surgery import prune_model
    from pgprune_core.testing.adapter_suite import TinyCase

    setup = TinyCase(TestQwen3(), "gqa-sliding-untied", ("head",), registry)
    norms = [{name: getattr(site.attention.module, name).weight.clone()
              for name in ("q_norm", "k_norm")} for site in setup.structure.layers]
    prune_model(setup.structure, setup.layout, setup.granularities, setup.keep())
    assert setup.structure.layers[1].attention.n_heads == 0  # this layer lost every head
    for site, before in zip(setup.structure.layers, norms, strict=True):
        for name, weight in before.items():
            assert weight.shape == (HEAD_DIM,)
            assert torch.equal(getattr(site.attention.module, name).weight, weight)
