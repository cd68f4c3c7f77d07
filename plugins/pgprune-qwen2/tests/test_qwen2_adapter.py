"""The qwen2 adapter through the shared adapter checks (pgprune_core.testing.adapter_suite)."""

from __future__ import annotations

from transformers import Qwen2Config

from pgprune_core.testing.adapter_suite import AdapterSuite


def _config(**extra):
    base = dict(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Qwen2Config(**{**base, **extra})


class TestQwen2(AdapterSuite):
    adapter = "qwen2"
    distribution = "pgprune-qwen2"
    variants = {
        # layers 2 and 3 slide over 8 tokens: dropping layer 0 must not shift that
        "gqa-sliding-untied": lambda: _config(use_sliding_window=True, sliding_window=8,
                                              max_window_layers=2),
        "mha-tied": lambda: _config(num_key_value_heads=4, tie_word_embeddings=True),
    }
