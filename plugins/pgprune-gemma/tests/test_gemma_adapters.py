"""The gemma2 and gemma3 adapters through the shared adapter checks
(pgprune_core.testing.adapter_suite), which also check that the sliding-window pattern of a
pruned model is the original one with the dropped layers left out."""

from __future__ import annotations

import pytest
from transformers import Gemma2Config, Gemma3Config, Gemma3TextConfig

from pgprune_core.errors import ModelError
from pgprune_core.model.hf_adapter import resolve_adapter
from pgprune_core.testing.adapter_suite import AdapterSuite, tiny_decoder

#: head_dim 16 (independent of hidden 32 / 4 heads), an 8-token window
GEMMA = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
#: full attention in layers 1 and 2: dropping layer 0 must give [full, full, sliding]
PATTERN = ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]


class TestGemma2(AdapterSuite):
    adapter = "gemma2"
    distribution = "pgprune-gemma"
    variants = {
        "gqa-softcap-tied": lambda: tiny_decoder(Gemma2Config, **GEMMA, attn_logit_softcapping=20.0,
                                                 final_logit_softcapping=10.0),
        "pattern-untied": lambda: tiny_decoder(Gemma2Config, **GEMMA, num_key_value_heads=4,
                                               layer_types=PATTERN, tie_word_embeddings=False),
    }


class TestGemma3(AdapterSuite):
    adapter = "gemma3"
    distribution = "pgprune-gemma"
    variants = {
        "gqa-pattern-tied": lambda: tiny_decoder(Gemma3TextConfig, **GEMMA, layer_types=PATTERN),
        "softcap-untied": lambda: tiny_decoder(
            Gemma3TextConfig, **GEMMA, sliding_window_pattern=2, attn_logit_softcapping=20.0,
            final_logit_softcapping=10.0, tie_word_embeddings=False),
    }


def test_the_multimodal_gemma3_type_is_refused_in_one_line(tmp_path, registry):
    Gemma3Config().save_pretrained(tmp_path)
    with pytest.raises(ModelError) as info:
        resolve_adapter(str(tmp_path), registry=registry)
    message = str(info.value)
    assert "model type 'gemma3' is not supported; supported: " in message
    assert "gemma3 (model type gemma3_text)" in message and "\n" not in message
