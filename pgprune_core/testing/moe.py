"""Tiny in-process mixture-of-experts models (Mixtral, Qwen2-MoE, Qwen3-MoE) for tests.

Like :func:`pgprune_core.testing.tiny_model`: built from the transformers config classes with
seeded random weights, nothing downloaded.  The router weights are drawn larger than the
models' own initialisation so that routing differs visibly from token to token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

MoeArch = Literal["mixtral", "qwen2_moe", "qwen3_moe"]
MOE_ARCHS: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe")


def tiny_moe_config(
    arch: MoeArch = "mixtral",
    *,
    vocab_size: int = 320,
    hidden_size: int = 32,
    expert_size: int = 24,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    num_experts: int = 8,
    top_k: int = 2,
    **extra: Any,
) -> Any:
    """The config of a tiny sparse model: ``num_experts`` routed experts of width
    ``expert_size`` per layer, ``top_k`` of them per token.  ``qwen2_moe`` adds a shared
    expert of width ``2 * expert_size``; Qwen's ``norm_topk_prob`` may be passed in
    ``extra`` (Qwen2-MoE defaults to False, Qwen3-MoE to True here)."""
    from transformers import MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        max_position_embeddings=256, tie_word_embeddings=False, num_experts_per_tok=top_k,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if arch == "mixtral":
        return MixtralConfig(**common, intermediate_size=expert_size,
                             num_local_experts=num_experts, **extra)
    qwen = dict(common, moe_intermediate_size=expert_size, num_experts=num_experts,
                intermediate_size=2 * expert_size)
    if arch == "qwen2_moe":
        return Qwen2MoeConfig(**qwen, shared_expert_intermediate_size=2 * expert_size,
                              **{"norm_topk_prob": False, **extra})
    if arch == "qwen3_moe":
        return Qwen3MoeConfig(**qwen, **{"head_dim": hidden_size // num_attention_heads,
                                         "norm_topk_prob": True, **extra})
    raise ValueError(f"unknown tiny mixture-of-experts architecture {arch!r}; "
                     f"choose one of {', '.join(MOE_ARCHS)}")


def tiny_moe_model(arch: MoeArch = "mixtral", *, seed: int = 0,
                   dtype: torch.dtype = torch.float32, **config_kwargs: Any) -> Any:
    """A randomly initialised tiny sparse causal LM in eval mode."""
    from transformers import AutoModelForCausalLM

    config = tiny_moe_config(arch, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "embed" not in name:
                param.normal_(0.0, 1.0 if name.endswith("gate.weight") else 0.2)
    return model.eval()


def save_tiny_moe_model(path: str | Path, arch: MoeArch = "mixtral", **kwargs: Any) -> Path:
    """Write a tiny sparse model and a tiny tokenizer as a normal HF directory."""
    from pgprune_core.testing import tiny_tokenizer

    path = Path(path)
    model = tiny_moe_model(arch, **kwargs)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return path
