"""The gemma2 and gemma3 adapters through the shared adapter checks
(pgprune_core.testing.adapter_suite), which also check that the sliding-window pattern of a
pruned model is the original one with the dropped layers left out."""

from __future__ import annotations

from transformers import Gemma2Config, Gemma3Config, Gemma3TextConfig

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



def _multimodal(**text):
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, image_size=16, patch_size=8)
    return Gemma3Config(text_config=tiny_decoder(Gemma3TextConfig, **GEMMA, **text).to_dict(),
                        vision_config=vision, mm_tokens_per_image=4, image_token_index=300,
                        boi_token_index=301, eoi_token_index=302)


class TestGemma3Multimodal(AdapterSuite):
    """The language model of an image-text Gemma 3; the vision tower is left alone."""

    adapter = "gemma3-multimodal"
    distribution = "pgprune-gemma"
    variants = {"gqa-pattern-tied": lambda: _multimodal(layer_types=PATTERN)}


def test_the_vision_tower_is_left_as_it_is(registry):
    import torch

    from pgprune_core.model.surgery import prune_model
    from pgprune_core.testing.adapter_suite import KIND_COMBINATIONS, TinyCase

    setup = TinyCase(TestGemma3Multimodal(), "gqa-pattern-tied", KIND_COMBINATIONS[-1], registry)
    towers = setup.model.model
    before = {name: p.clone() for name, p in towers.named_parameters()
              if not name.startswith("language_model.")}
    prune_model(setup.structure, setup.layout, setup.granularities, setup.keep())
    after = {name: p for name, p in towers.named_parameters()
             if not name.startswith("language_model.")}
    assert before.keys() == after.keys() and len(before) > 0
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert setup.model.config.text_config.num_hidden_layers == 3
