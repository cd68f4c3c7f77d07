"""The qwen2 adapter through the shared adapter checks (pgprune_core.testing.adapter_suite)."""

from __future__ import annotations

from transformers import Qwen2Config

from pgprune_core.testing.adapter_suite import AdapterSuite, tiny_decoder


class TestQwen2(AdapterSuite):
    adapter = "qwen2"
    distribution = "pgprune-qwen2"
    variants = {
        # layers 2 and 3 slide over 8 tokens: dropping layer 0 must not shift that
        "gqa-sliding-untied": lambda: tiny_decoder(Qwen2Config, use_sliding_window=True,
                                                   sliding_window=8, max_window_layers=2),
        "mha-tied": lambda: tiny_decoder(Qwen2Config, num_key_value_heads=4,
                                         tie_word_embeddings=True),
    }
