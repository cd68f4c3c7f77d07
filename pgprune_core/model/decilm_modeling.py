"""Configuration and modeling of the Nemotron-NAS ``DeciLMForCausalLM`` format, as written by
``pgprune export --format decilm``.

NVIDIA's Nemotron-NAS models (``DeciLMForCausalLM``, e.g. Llama-3_3-Nemotron-Super-49B) are
LLaMA decoders whose layers differ: ``config.block_configs[i]`` gives each layer an
``attention`` and an ``ffn`` sub-block.  An attention sub-block is either ``no_op`` (no
attention and no ``input_layernorm``) or has ``n_heads_in_group`` query heads per KV head,
the query-head count ``num_attention_heads`` being the same in every layer; an ffn sub-block
is either ``no_op`` (no MLP and no ``post_attention_layernorm``) or has the width derived
from ``ffn_mult`` as the engines do: ``ceil_to_multiple(int(2 * ffn_mult * hidden / 3),
256)``.  vLLM and SGLang (``models/nemotron_nas.py``) serve such directories natively.

This file is copied verbatim beside the weights (``modeling_decilm.py``) and named in
``config.json``'s ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(path,
trust_remote_code=True)`` rebuilds the model in transformers.  It imports only torch and
transformers.  Besides NVIDIA's fields it reads an optional ``intermediate_size`` in an ffn
sub-block (an exact width for widths that ``ffn_mult`` cannot express; vLLM reads it when
``ffn_mult`` is absent, SGLang and NVIDIA's own code need ``ffn_mult``) and, per attention
sub-block, NVIDIA's ``window_length`` (a sliding window, built on the Mistral classes).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from transformers import MistralConfig, MistralForCausalLM

#: the rounding of ``ffn_mult``-derived widths in vLLM, SGLang and NVIDIA's code
FFN_MULTIPLE = 256


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The MLP width an engine derives from ``ffn_mult``."""
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % FFN_MULTIPLE == 0 else size + FFN_MULTIPLE - size % FFN_MULTIPLE


class SubBlock:
    """One ``attention`` or ``ffn`` entry of a block config, read by attribute (as the
    engines read NVIDIA's dataclasses); fields absent from the JSON are absent here."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)
        self.__dict__.setdefault("no_op", False)
        self.__dict__.setdefault("replace_with_linear", False)

    def __getattr__(self, name: str) -> Any:
        # only reached for fields the JSON lacks: hasattr() is False for them, as for vLLM
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BlockConfig:
    """One layer's ``{"attention": {...}, "ffn": {...}}``."""

    def __init__(self, attention: Any, ffn: Any) -> None:
        self.attention = attention if isinstance(attention, SubBlock) else SubBlock(dict(attention))
        self.ffn = ffn if isinstance(ffn, SubBlock) else SubBlock(dict(ffn))

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}


class DeciLMConfig(MistralConfig):
    """A LLaMA-decoder config (Mistral's: explicit ``head_dim``, optional ``sliding_window``)
    with per-layer ``block_configs``."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs: list[Any] | None = None, **kwargs: Any) -> None:
        self.block_configs = [b if isinstance(b, BlockConfig) else BlockConfig(**b)
                              for b in (block_configs or [])]
        kwargs.setdefault("sliding_window", None)
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["block_configs"] = [b.to_dict() for b in self.block_configs]
        return out


def block_width(ffn: SubBlock, hidden_size: int) -> int:
    """The MLP width of an active ffn sub-block (``ffn_mult`` first, as vLLM does)."""
    if getattr(ffn, "ffn_mult", None) is not None:
        return ffn_mult_to_intermediate_size(ffn.ffn_mult, hidden_size)
    if getattr(ffn, "intermediate_size", None) is not None:
        return int(ffn.intermediate_size)
    raise ValueError("an active ffn block config needs ffn_mult or intermediate_size")


class NoOpAttention(nn.Module):
    """An attention sub-block that is ``no_op``: adds nothing to the residual stream, but
    records the step in the KV cache (with zero heads) so that the cache length advances."""

    def __init__(self, layer_idx: int, head_dim: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class NoOpMlp(nn.Module):
    """An ffn sub-block that is ``no_op``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _linear(in_features: int, out_features: int, bias: bool, like: nn.Linear) -> nn.Linear:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return nn.Linear(in_features, out_features, bias=bias, device=like.weight.device,
                         dtype=like.weight.dtype)


def rebuild_blocks(model: nn.Module, config: DeciLMConfig) -> None:
    """Give every layer of ``model`` (built with uniform shapes) its block config."""
    layers: Any = model.get_submodule("model.layers")
    if len(layers) != len(config.block_configs):
        raise ValueError(f"num_hidden_layers is {len(layers)} but block_configs has "
                         f"{len(config.block_configs)} entries")
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    n_heads = config.num_attention_heads
    attention_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    for index, (layer, block) in enumerate(zip(layers, config.block_configs, strict=True)):
        attention, ffn = block.attention, block.ffn
        if attention.replace_with_linear or ffn.replace_with_linear:
            raise ValueError(f"layer {index}: replace_with_linear blocks are not supported")
        if attention.no_op:
            layer.self_attn = NoOpAttention(index, head_dim)
            layer.input_layernorm = nn.Identity()
        else:
            n_kv = n_heads // int(attention.n_heads_in_group)
            module = layer.self_attn
            old = module.q_proj
            module.q_proj = _linear(hidden, n_heads * head_dim, attention_bias, old)
            module.k_proj = _linear(hidden, n_kv * head_dim, attention_bias, old)
            module.v_proj = _linear(hidden, n_kv * head_dim, attention_bias, old)
            module.o_proj = _linear(n_heads * head_dim, hidden, attention_bias, old)
            module.num_key_value_groups = n_heads // n_kv
        if ffn.no_op:
            layer.mlp = NoOpMlp()
            layer.post_attention_layernorm = nn.Identity()
        else:
            width = block_width(ffn, hidden)
            mlp = layer.mlp
            old = mlp.gate_proj
            mlp.gate_proj = _linear(hidden, width, mlp_bias, old)
            mlp.up_proj = _linear(hidden, width, mlp_bias, old)
            mlp.down_proj = _linear(width, hidden, mlp_bias, old)
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = width


class DeciLMForCausalLM(MistralForCausalLM):
    """``DeciLMForCausalLM`` in transformers: the Mistral classes (a LLaMA decoder that also
    honours ``sliding_window``; without one it computes exactly what LLaMA computes) with
    each layer rebuilt from its block config."""

    config_class = DeciLMConfig

    def __init__(self, config: DeciLMConfig) -> None:
        if not getattr(config, "num_key_value_heads", None):
            config.num_key_value_heads = config.num_attention_heads
        super().__init__(config)
        rebuild_blocks(self, config)
