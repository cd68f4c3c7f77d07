"""The phi3 adapter through the shared adapter checks (pgprune_core.testing.adapter_suite),
and the rows surgery cuts out of the fused projections."""

from __future__ import annotations

import torch
from transformers import Phi3Config

from pgprune_core.model.surgery import prune_model
from pgprune_core.testing.adapter_suite import AdapterSuite, TinyCase, tiny_decoder


class TestPhi3(AdapterSuite):
    adapter = "phi3"
    distribution = "pgprune-phi3"
    variants = {
        "gqa-sliding-untied": lambda: tiny_decoder(Phi3Config, sliding_window=8),
        "mha-partial-rope-tied": lambda: tiny_decoder(
            Phi3Config, num_key_value_heads=4, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "partial_rotary_factor": 0.5}),
    }


def test_surgery_keeps_the_rows_of_the_kept_units_in_each_fused_block(registry):
    setup = TinyCase(TestPhi3(), "gqa-sliding-untied", ("channel", "head"), registry)
    site = setup.structure.layers[0]
    qkv = site.attention.module.qkv_proj.weight.clone()
    gate_up = site.mlp.module.gate_up_proj.weight.clone()
    keep = torch.ones(len(setup.layout), dtype=torch.bool)
    keep[setup.layout.offsets["channel"].start + 5] = False  # channel 5 of layer 0
    keep[setup.layout.offsets["head"].start + 0] = False  # KV group 0 of layer 0
    prune_model(setup.structure, setup.layout, setup.granularities, keep)
    channels = [j for j in range(48) if j != 5]
    assert torch.equal(site.mlp.module.gate_up_proj.weight,
                       gate_up[channels + [48 + j for j in channels]])
    # 8-wide heads; group 0 = query heads 0-1 (rows 0-15), key head 0 (32-39), value head 0 (48-55)
    rows = list(range(16, 32)) + list(range(40, 48)) + list(range(56, 64))
    assert torch.equal(site.attention.module.qkv_proj.weight, qkv[rows])
    assert site.attention.module.config.num_attention_heads == 2
    assert setup.model.config.num_attention_heads == 4  # the shared config is untouched
